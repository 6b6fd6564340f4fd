#![cfg(all(feature = "proxy", feature = "tls"))]
//! The reverse proxy talking mTLS to a service: the gateway presents its
//! client certificate, the service requires and verifies it and sees the
//! gateway's identity; wrong certificates on either side fail closed (502).

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{Extension, Router, routing::get};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_gateway::{
    discovery::{Endpoint, StaticDiscovery},
    identity::Identity,
    proxy::{Proxy, RetryConfig, Upstream},
    route::{Route, Routes},
    tls::{self, MtlsAcceptor, MtlsClientConfig},
};

/// A private CA issuing leaves.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) for a leaf with these SANs.
    fn leaf(&self, sans: Vec<SanType>) -> (String, String) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        (
            params.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

fn ip_san() -> Vec<SanType> {
    vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))]
}

fn spiffe(id: &str) -> Vec<SanType> {
    vec![SanType::URI(id.try_into().unwrap())]
}

/// An mTLS service answering with the caller's certificate identity.
async fn start_service(ca: &Ca) -> u16 {
    let (chain, key) = ca.leaf(ip_san());
    let acceptor =
        MtlsAcceptor::from_pem(chain.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
    let app =
        Router::new().route(
            "/whoami",
            get(|Extension(id): Extension<Identity>| async move {
                id.subject().unwrap_or("-").to_owned()
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { tls::serve(listener, acceptor, app).await });
    port
}

async fn call_through_proxy(port: u16, client_config: &MtlsClientConfig) -> (u16, Bytes) {
    let discovery = StaticDiscovery::new([Endpoint::new("svc-1", "127.0.0.1", port)]);
    let upstream = Upstream::new("svc", discovery.watch())
        .tls(tls::client_connector(client_config))
        .retries(RetryConfig::none())
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream))
        .build()
        .unwrap();
    let proxy = Proxy::new(&table);
    let request = Request::get("/whoami")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), proxy.oneshot(request))
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_presents_its_certificate_and_the_service_sees_the_gateway() {
    let ca = Ca::new();
    let port = start_service(&ca).await;
    let (chain, key) = ca.leaf(spiffe("spiffe://shop/gateway"));
    let config =
        MtlsClientConfig::from_pem(chain.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
    let (status, body) = call_through_proxy(port, &config).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, "spiffe://shop/gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_certificate_from_another_ca_is_refused_by_the_service() {
    let ca = Ca::new();
    let other = Ca::new();
    let port = start_service(&ca).await;
    // The gateway trusts the right CA but presents a certificate from another.
    let (chain, key) = other.leaf(spiffe("spiffe://evil/gateway"));
    let config =
        MtlsClientConfig::from_pem(chain.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
    let (status, body) = call_through_proxy(port, &config).await;
    assert_eq!(status, 502);
    assert!(!String::from_utf8_lossy(&body).contains("evil"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_certificate_from_another_ca_is_refused_by_the_proxy() {
    let ca = Ca::new();
    let rogue_ca = Ca::new();
    // A service whose server certificate the gateway's CA did not issue.
    let port = start_service(&rogue_ca).await;
    let (chain, key) = ca.leaf(spiffe("spiffe://shop/gateway"));
    let config =
        MtlsClientConfig::from_pem(chain.as_bytes(), key.as_bytes(), ca.pem.as_bytes()).unwrap();
    let (status, _) = call_through_proxy(port, &config).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_reach_the_service_directly() {
    let ca = Ca::new();
    let port = start_service(&ca).await;
    // Trusting the CA is not enough: the service requires a client certificate.
    let roots = {
        let mut store = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
        store
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(format!("https://127.0.0.1:{port}/whoami").parse().unwrap()),
    )
    .await
    .expect("answered in time");
    match result {
        Err(_) => {}
        Ok(response) => {
            // TLS 1.3 reports the missing certificate after the handshake:
            // the request then fails while reading, never with a 200.
            let body = response.into_body().collect().await;
            assert!(
                body.is_err(),
                "a client without a certificate got an answer"
            );
        }
    }
}
