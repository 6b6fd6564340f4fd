#![cfg(all(feature = "proxy", feature = "consul"))]
//! The proxy balancing over endpoints that Consul (the API double) reports:
//! instances come and go while requests flow, and Consul itself goes down
//! and comes back.

mod consul_double;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use consul_double::ConsulDouble;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{rt::TokioExecutor, rt::TokioIo, server::conn::auto};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};
use tower::ServiceExt;
use tower_gateway::{
    discovery::consul::{ConsulClient, ConsulDiscoveryService},
    proxy::{Proxy, Upstream},
    route::{Route, Routes},
};

/// An instance of the service: answers with its name; `kill` closes it.
struct Instance {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Instance {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                connections.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            async move {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
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

    fn register(&self, double: &ConsulDouble, id: &str) {
        double.register(
            json!({"ID": id, "Name": "orders", "Address": "127.0.0.1", "Port": self.addr.port()}),
        );
    }

    fn kill(&self) {
        // Aborting the accept loop drops its connection tasks with it.
        self.task.abort();
    }
}

async fn watcher(double: &ConsulDouble) -> ConsulDiscoveryService {
    let orders = ConsulClient::new(double.url())
        .unwrap()
        .watch("orders")
        .wait(Duration::from_secs(10))
        .min_query_interval(Duration::from_millis(20))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .spawn()
        .unwrap();
    assert!(orders.wait_for_sync(Duration::from_secs(5)).await);
    orders
}

fn proxy(orders: &ConsulDiscoveryService) -> Proxy {
    let upstream = Upstream::new("orders", orders.watch()).build().unwrap();
    Proxy::new(
        &Routes::builder()
            .route(Route::prefix("/").upstream(upstream))
            .build()
            .unwrap(),
    )
}

async fn get(proxy: &Proxy) -> (u16, String) {
    let request = Request::get("/orders")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), proxy.clone().oneshot(request))
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn until(deadline: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "condition not met in {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_registered_and_deregistered_under_load_move_traffic_within_one_round() {
    let double = ConsulDouble::start().await;
    let a = Instance::start("a").await;
    let b = Instance::start("b").await;
    a.register(&double, "orders-a");
    let orders = watcher(&double).await;
    let proxy = proxy(&orders);
    let watch = orders.watch();

    for i in 0..50 {
        assert_eq!(get(&proxy).await, (200, "a".into()), "request {i}");
    }
    // b registers while requests flow; the blocking query returns at once.
    b.register(&double, "orders-b");
    let seen = until(Duration::from_secs(2), || {
        watch.current().endpoints.contains_key("orders-b")
    })
    .await;
    assert!(seen < Duration::from_secs(1), "registration took {seen:?}");
    let mut got_b = 0;
    for i in 0..200 {
        let (status, name) = get(&proxy).await;
        assert_eq!(status, 200, "request {i}");
        got_b += usize::from(name == "b");
    }
    assert!(got_b > 0, "the new instance got no traffic");

    // a deregisters (a graceful shutdown) and then dies, while four clients
    // keep sending: no request fails, and none that starts after the change
    // is seen reaches a.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let proxy = proxy.clone();
        let stop = stop.clone();
        let changed_at = changed_at.clone();
        clients.spawn(async move {
            let mut late_to_a = 0;
            let mut count = 0;
            while !stop.load(Ordering::SeqCst) && count < 2_000 {
                let started = Instant::now();
                let (status, name) = get(&proxy).await;
                assert_eq!(status, 200, "a request failed during the change");
                let after_change = changed_at.lock().unwrap().is_some_and(|t| started > t);
                if after_change && name == "a" {
                    late_to_a += 1;
                }
                count += 1;
            }
            (count, late_to_a)
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    double.deregister("orders-a");
    let seen = until(Duration::from_secs(2), || {
        !watch.current().endpoints.contains_key("orders-a")
    })
    .await;
    *changed_at.lock().unwrap() = Some(Instant::now());
    assert!(
        seen < Duration::from_secs(1),
        "deregistration took {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    while let Some(result) = clients.join_next().await {
        let (count, late_to_a) = result.unwrap();
        total += count;
        assert_eq!(
            late_to_a, 0,
            "requests reached a after its deregistration was seen"
        );
    }
    assert!(total > 20, "only {total} requests ran during the change");
    for i in 0..50 {
        assert_eq!(
            get(&proxy).await,
            (200, "b".into()),
            "request {i} after deregistration"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_down_keeps_traffic_on_the_last_known_set_and_changes_flow_when_it_returns() {
    let double = ConsulDouble::start().await;
    let a = Instance::start("a").await;
    let c = Instance::start("c").await;
    a.register(&double, "orders-a");
    let orders = watcher(&double).await;
    let proxy = proxy(&orders);
    let watch = orders.watch();
    assert!(double.wait_parked("orders", Duration::from_secs(5)).await);

    double.stop().await;
    until(Duration::from_secs(5), || watch.current().stale).await;
    for i in 0..100 {
        assert_eq!(
            get(&proxy).await,
            (200, "a".into()),
            "request {i} while Consul is down"
        );
    }
    // While Consul was down, c registered and a left.
    c.register(&double, "orders-c");
    double.deregister("orders-a");
    double.resume().await;
    until(Duration::from_secs(5), || {
        let s = watch.current();
        !s.stale && s.endpoints.contains_key("orders-c") && !s.endpoints.contains_key("orders-a")
    })
    .await;
    // The upstream applies a new snapshot in a task of its own, a moment
    // after the watch publishes it: wait (bounded) for the first request
    // that sees it, then every later one must.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(&proxy).await != (200, "c".into()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic never moved to c"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..50 {
        assert_eq!(
            get(&proxy).await,
            (200, "c".into()),
            "request {i} after Consul returned"
        );
    }
    assert!(c.hits.load(Ordering::SeqCst) >= 50);
}
