//! Consul Connect certificates: the leaf and roots from the agent (the
//! Consul double, on loopback) serve and verify mutual TLS between two
//! services, follow leaf and CA rotations under load without a failed
//! request, and carry the peer's SPIFFE ID as its identity. One ignored
//! test runs against a real agent.
#![cfg(all(feature = "consul", feature = "tls"))]

mod consul_double;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Extension, Router, routing::get};
use bytes::Bytes;
use consul_double::{ConsulDouble, pki::TestCa};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::net::TcpListener;
use tower_gateway::{
    discovery::consul::{ConnectCertificates, ConnectStatus, ConsulClient},
    identity::Identity,
    tls::{self, MtlsAcceptor, MtlsClientConfig, PeerRoles},
};

const LONG: Duration = Duration::from_secs(5);

async fn whoami(Extension(identity): Extension<Identity>) -> String {
    let sans = identity
        .peer()
        .map(|p| p.sans.join(" "))
        .unwrap_or_default();
    format!("{sans} roles={}", identity.roles().join(","))
}

fn spiffe(double: &ConsulDouble, service: &str) -> String {
    format!(
        "spiffe://{}/ns/default/dc/dc1/svc/{service}",
        double.connect_trust_domain()
    )
}

async fn connect(double: &ConsulDouble, service: &str) -> ConnectCertificates {
    ConsulClient::new(double.url())
        .unwrap()
        .connect_certificates(service)
        .wait(Duration::from_secs(2))
        .min_query_interval(Duration::from_millis(5))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .start()
        .await
        .unwrap()
}

/// Serves `/whoami` over mTLS with the Connect certificates of `web`,
/// granting the role `gateway` to the gateway's SPIFFE ID.
async fn serve_web(double: &ConsulDouble, web: &ConnectCertificates) -> u16 {
    let acceptor = MtlsAcceptor::new(web.certificates())
        .peer_roles(PeerRoles::new().san(spiffe(double, "gateway"), ["gateway"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/whoami", get(whoami));
    tokio::spawn(async move { tls::serve(listener, acceptor, app).await });
    port
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A client that opens a connection (a handshake) per request.
fn client(config: &MtlsClientConfig) -> Client<Connector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(tls::client_connector(config))
}

async fn until(
    certs: &ConnectCertificates,
    what: &str,
    condition: impl Fn(&ConnectStatus) -> bool,
) -> ConnectStatus {
    let mut status = certs.subscribe();
    match tokio::time::timeout(LONG, status.wait_for(|s| condition(s))).await {
        Ok(Ok(status)) => status.clone(),
        _ => panic!("timed out waiting for {what}: {:?}", certs.status()),
    }
}

#[tokio::test]
async fn connect_certificates_serve_mtls_with_the_peer_spiffe_id_as_identity() {
    let double = ConsulDouble::start().await;
    let web = connect(&double, "web").await;
    let gateway = connect(&double, "gateway").await;
    assert_eq!(web.status().service_uri, spiffe(&double, "web"));
    assert_eq!(web.status().trust_domain, double.connect_trust_domain());
    assert_eq!(web.status().roots, 1);
    assert_eq!(
        web.certificates().certificate_chain()[0].as_ref(),
        &double.connect_leaf_der("web").unwrap()[..]
    );
    let port = serve_web(&double, &web).await;
    let url: http::Uri = format!("https://127.0.0.1:{port}/whoami").parse().unwrap();

    // The gateway presents its Connect leaf and verifies the server by
    // its SPIFFE ID (Connect leaves have no DNS name).
    let config = MtlsClientConfig::new(gateway.certificates())
        .unwrap()
        .expect_server_uri(spiffe(&double, "web"));
    let response = client(&config).get(url.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        format!("{} roles=gateway", spiffe(&double, "gateway"))
    );

    // A server that is not `web` (wrong SPIFFE ID expected) is refused.
    let wrong = MtlsClientConfig::new(gateway.certificates())
        .unwrap()
        .expect_server_uri(spiffe(&double, "billing"));
    assert!(client(&wrong).get(url.clone()).await.is_err());

    // Host-name verification fails: the leaf names no host.
    let by_name = MtlsClientConfig::new(gateway.certificates()).unwrap();
    assert!(client(&by_name).get(url.clone()).await.is_err());

    // A client certificate from another CA is refused by the server.
    let stranger = TestCa::new("other");
    let leaf = stranger.leaf("gateway", &[&spiffe(&double, "gateway")]);
    let roots = double.connect_roots_pem().concat();
    let impostor = MtlsClientConfig::from_pem(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        roots.as_bytes(),
    )
    .unwrap()
    .expect_server_uri(spiffe(&double, "web"));
    assert!(client(&impostor).get(url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rotations_under_load_fail_no_request() {
    let double = ConsulDouble::start().await;
    let web = connect(&double, "web").await;
    let gateway = connect(&double, "gateway").await;
    let port = serve_web(&double, &web).await;
    let url: http::Uri = format!("https://127.0.0.1:{port}/whoami").parse().unwrap();
    let config = MtlsClientConfig::new(gateway.certificates())
        .unwrap()
        .expect_server_uri(spiffe(&double, "web"));
    let expected = format!("{} roles=gateway", spiffe(&double, "gateway"));

    let stop = Arc::new(AtomicBool::new(false));
    // Which step of the rotations a failure happened in.
    let phase = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (client, url, stop, served, expected, phase) = (
            client(&config),
            url.clone(),
            stop.clone(),
            served.clone(),
            expected.clone(),
            phase.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = phase.load(Ordering::SeqCst);
                let outcome = tokio::time::timeout(LONG, client.get(url.clone())).await;
                match outcome {
                    Ok(Ok(response)) if response.status() == 200 => {
                        let body = response.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(body, expected);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(response)) => failures.push(format!(
                        "phase {}: status {}",
                        phase.load(Ordering::SeqCst),
                        response.status()
                    )),
                    Ok(Err(error)) => failures.push(format!(
                        "phase {started}-{}: {error:?}",
                        phase.load(Ordering::SeqCst)
                    )),
                    Err(_) => {
                        failures.push(format!("phase {}: timed out", phase.load(Ordering::SeqCst)))
                    }
                }
            }
            failures
        }));
    }
    let first_web = web.status();
    let first_gateway = gateway.status();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The web leaf rotates twice, the gateway leaf once.
    phase.store(1, Ordering::SeqCst);
    double.rotate_connect_leaf("web");
    let second = until(&web, "the first web rotation", |s| s.updates == 1).await;
    assert_ne!(second.serial_number, first_web.serial_number);
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(2, Ordering::SeqCst);
    double.rotate_connect_leaf("gateway");
    double.rotate_connect_leaf("web");
    until(&web, "the second web rotation", |s| s.updates == 2).await;
    until(&gateway, "the gateway rotation", |s| s.updates == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A CA rotation: a new active root, both trusted, then leaves
    // re-issued by the new root (with the cross-signed intermediate) —
    // here at once, before every peer may have seen the new root.
    phase.store(3, Ordering::SeqCst);
    double.rotate_connect_ca();
    phase.store(4, Ordering::SeqCst);
    double.reissue_connect_leaves();
    let both = until(&web, "web trusting both roots", |s| s.roots == 2).await;
    until(&gateway, "gateway trusting both roots", |s| s.roots == 2).await;
    assert_ne!(both.active_root_id, first_web.active_root_id);
    until(&web, "the re-issued web leaf", |s| s.updates == 4).await;
    until(&gateway, "the re-issued gateway leaf", |s| s.updates == 3).await;
    phase.store(5, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        served.load(Ordering::Relaxed) > 80,
        "{served:?} requests served"
    );

    // The material in use is the agent's current leaf.
    assert_eq!(
        web.certificates().certificate_chain()[0].as_ref(),
        &double.connect_leaf_der("web").unwrap()[..]
    );
    assert_eq!(
        gateway.certificates().certificate_chain()[0].as_ref(),
        &double.connect_leaf_der("gateway").unwrap()[..]
    );
    assert_ne!(gateway.status().serial_number, first_gateway.serial_number);
    assert_eq!(web.status().failures, 0);
}

/// Plain (non-blocking) reads of the leaf of `service`.
fn plain_leaf_reads(double: &ConsulDouble, service: &str) -> usize {
    let path = format!("/v1/agent/connect/ca/leaf/{service}");
    double
        .requests()
        .iter()
        .filter(|r| r.path == path && r.param("index").is_none())
        .count()
}

#[tokio::test]
async fn connect_leaf_is_fetched_again_at_two_thirds_of_its_validity() {
    let double = ConsulDouble::start().await;
    // The double backdates leaves by a minute: valid from now - 60 s to
    // now + 36 s (to the second), two thirds of which is now + 3 to 4 s.
    double.set_connect_leaf_ttl(Duration::from_secs(36));
    let web = connect(&double, "web").await;
    assert_eq!(plain_leaf_reads(&double, "web"), 1, "the initial read");

    // Before the renewal point the leaf is only watched (blocking
    // queries), never re-read.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(plain_leaf_reads(&double, "web"), 1);

    // Past it, the leaf is read again without waiting for a change.
    assert!(
        double
            .wait_until(LONG, |d| plain_leaf_reads(d, "web") >= 2)
            .await,
        "no renewal read"
    );
    // The agent still had the same leaf: nothing new installed, and the
    // reads back off (10 ms doubling to 100 ms here) instead of looping.
    assert_eq!(web.status().updates, 0);
    let first_renewal_reads = plain_leaf_reads(&double, "web");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = plain_leaf_reads(&double, "web") - first_renewal_reads;
    assert!((3..=20).contains(&reads), "{reads} renewal reads in 1 s");
    // Once the agent renews it, the new leaf is installed.
    double.rotate_connect_leaf("web");
    until(&web, "the renewed leaf", |s| s.updates >= 1).await;
    assert_eq!(
        web.certificates().certificate_chain()[0].as_ref(),
        &double.connect_leaf_der("web").unwrap()[..]
    );
}

#[tokio::test]
async fn connect_certificates_stop_following_consul_with_the_last_handle() {
    let double = ConsulDouble::start().await;
    // Past its renewal point at once: the leaf is re-read every 10 to
    // 100 ms for as long as the background task runs.
    double.set_connect_leaf_ttl(Duration::from_secs(1));
    let web = connect(&double, "web").await;
    let certs = web.certificates().clone();
    let clone = web.clone();
    assert!(
        double
            .wait_until(LONG, |d| plain_leaf_reads(d, "web") >= 3)
            .await
    );
    // One handle left: still running.
    drop(web);
    let before = plain_leaf_reads(&double, "web");
    assert!(
        double
            .wait_until(LONG, |d| plain_leaf_reads(d, "web") > before)
            .await
    );
    // The last handle goes: no more queries, the material stays usable.
    drop(clone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = plain_leaf_reads(&double, "web");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(plain_leaf_reads(&double, "web"), after);
    assert!(!certs.certificate_chain().is_empty());
}

#[tokio::test]
#[ignore = "needs a real Consul agent with Connect: CONSUL_HTTP_ADDR=..."]
async fn connect_certificates_from_a_real_agent() {
    let consul = tower_gateway::discovery::consul::ConsulClientBuilder::from_env()
        .build()
        .unwrap();
    let web = consul
        .connect_certificates("tower-gateway-test")
        .start()
        .await
        .unwrap();
    let status = web.status();
    assert!(
        status.service_uri.starts_with("spiffe://")
            && status.service_uri.ends_with("/svc/tower-gateway-test"),
        "{status:?}"
    );
    assert!(status.roots >= 1);
    let peer = tls::parse_peer_certificate(&web.certificates().certificate_chain()[0]).unwrap();
    assert!(peer.sans.contains(&status.service_uri), "{peer:?}");
}
