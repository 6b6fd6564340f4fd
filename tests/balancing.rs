//! Balancing that never starves an endpoint: new endpoints get traffic at
//! once, equal endpoints share it fairly under every balancer, and a dead
//! endpoint costs no client a failed request — all over real loopback
//! sockets.
#![cfg(feature = "proxy")]

mod support_proxy;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower_gateway::{
    discovery::{Endpoint, StaticDiscovery},
    proxy::{Balancer, Upstream},
};

/// An upstream that answers every request with its name (and the size of
/// the body it received), counting hits.
struct Named {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Named {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let size = body.map(|b| b.len()).unwrap_or(0);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "{name} {size}"
                            )))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint::new(id.to_owned(), "127.0.0.1", self.addr.port())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A loopback port nothing listens on: connections are refused.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

type Body = Full<Bytes>;

async fn request(gw: SocketAddr, method: &str, body: &'static str) -> (u16, String) {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{gw}/x"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn balancers() -> [Balancer; 3] {
    [
        Balancer::LeastRequest,
        Balancer::RoundRobin,
        Balancer::peak_ewma().into(),
    ]
}

/// Peak-EWMA is in the list with a decay short enough for a test: it
/// follows latency, so a first slow answer (a connection set up) holds an
/// endpoint back until the decay forgets it. With the default 10 s decay
/// that takes seconds of sequential traffic (see `PeakEwma`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_endpoints_share_sequential_traffic_fairly_under_every_balancer() {
    let balancers = [
        Balancer::LeastRequest,
        Balancer::RoundRobin,
        Balancer::peak_ewma()
            .decay(Duration::from_millis(20))
            .into(),
    ];
    for balancer in balancers {
        let upstreams = [
            Named::start("a").await,
            Named::start("b").await,
            Named::start("c").await,
        ];
        let discovery = StaticDiscovery::new(
            upstreams
                .iter()
                .zip(["a", "b", "c"])
                .map(|(u, id)| u.endpoint(id)),
        );
        let upstream = Upstream::new("svc", discovery.watch())
            .balancer(balancer)
            .build()
            .unwrap();
        let gw = support_proxy::serve_one(upstream).await;
        for _ in 0..300 {
            assert_eq!(request(gw, "GET", "").await.0, 200);
        }
        let hits: Vec<usize> = upstreams.iter().map(Named::hits).collect();
        for (i, &h) in hits.iter().enumerate() {
            assert!(
                h >= 45,
                "{balancer:?}: endpoint {i} got {h} of 300 sequential requests ({hits:?}), under 15%"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_gets_sequential_traffic_within_a_second_under_every_balancer() {
    for balancer in balancers() {
        let a = Named::start("a").await;
        let b = Named::start("b").await;
        let discovery = StaticDiscovery::new([a.endpoint("a")]);
        let upstream = Upstream::new("svc", discovery.watch())
            .balancer(balancer)
            .build()
            .unwrap();
        let gw = support_proxy::serve_one(upstream).await;
        // Warm up the first endpoint, so its estimates are real figures.
        for _ in 0..100 {
            assert_eq!(request(gw, "GET", "").await.1, "a 0");
        }
        discovery.set([a.endpoint("a"), b.endpoint("b")]);
        let started = tokio::time::Instant::now();
        let mut seen_b = None;
        while started.elapsed() < Duration::from_secs(1) {
            let (status, body) = request(gw, "GET", "").await;
            assert_eq!(status, 200);
            if body.starts_with('b') {
                seen_b = Some(started.elapsed());
                break;
            }
        }
        assert!(
            seen_b.is_some(),
            "{balancer:?}: the new endpoint got no sequential request within 1 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_that_still_looks_healthy_fails_no_request() {
    let a = Named::start("a").await;
    let b = Named::start("b").await;
    let dead = dead_port().await;
    let discovery = StaticDiscovery::new([
        a.endpoint("a"),
        b.endpoint("b"),
        Endpoint::new("dead", "127.0.0.1", dead),
    ]);
    let upstream = Upstream::new("svc", discovery.watch()).build().unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    let mut failed = 0;
    // GETs and POSTs with bodies: a refused connection never sent the
    // request, so either goes to another endpoint — body included.
    for i in 0..60 {
        let (status, body) = if i % 2 == 0 {
            request(gw, "GET", "").await
        } else {
            request(gw, "POST", "0123456789").await
        };
        if status != 200 {
            failed += 1;
        } else if i % 2 == 1 {
            assert!(
                body.ends_with(" 10"),
                "the body was lost on the retry: {body}"
            );
        }
    }
    assert_eq!(failed, 0, "requests failed on a dead endpoint");
    assert_eq!(a.hits() + b.hits(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_dead_endpoint_costs_at_most_one_failed_request() {
    let a = Named::start("a").await;
    let dead = dead_port().await;
    let discovery =
        StaticDiscovery::new([a.endpoint("a"), Endpoint::new("dead", "127.0.0.1", dead)]);
    let upstream = Upstream::new("svc", discovery.watch())
        .retries(tower_gateway::proxy::RetryConfig::none())
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    let mut statuses = HashMap::new();
    for _ in 0..50 {
        *statuses.entry(request(gw, "GET", "").await.0).or_insert(0) += 1;
    }
    let failed = 50 - statuses.get(&200).copied().unwrap_or(0);
    assert!(
        failed <= 1,
        "a dead endpoint cost {failed} failed requests: {statuses:?}"
    );
    assert_eq!(statuses.get(&502).copied().unwrap_or(0), failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_goes_back_to_the_endpoint_that_failed() {
    // Two dead endpoints and one live: with two retries, every request
    // must reach the live one — possible only if no retry repeats a dead
    // endpoint it already tried.
    let live = Named::start("live").await;
    let dead_1 = dead_port().await;
    let dead_2 = dead_port().await;
    for round in 0..20 {
        let discovery = StaticDiscovery::new([
            Endpoint::new("d1", "127.0.0.1", dead_1),
            Endpoint::new("d2", "127.0.0.1", dead_2),
            live.endpoint("live"),
        ]);
        // A fresh upstream every round: no ejection is remembered, so the
        // first pick often is a dead endpoint.
        let upstream = Upstream::new("svc", discovery.watch())
            .balancer(Balancer::RoundRobin)
            .build()
            .unwrap();
        let gw = support_proxy::serve_one(upstream).await;
        let (status, body) = request(gw, "GET", "").await;
        assert_eq!((status, body.as_str()), (200, "live 0"), "round {round}");
    }
    drop(live.task);
}
