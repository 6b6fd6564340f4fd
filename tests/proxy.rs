#![cfg(feature = "proxy")]
//! The reverse proxy over real loopback sockets: routing, header rewrites,
//! streaming, balancing through discovery changes and failures, timeouts,
//! retries, WebSocket upgrades.

mod support_proxy;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener, task::JoinSet};
use tower_gateway::{
    circuit::CircuitConfig,
    discovery::{Endpoint, StaticDiscovery},
    proxy::{RetryConfig, Upstream},
    route::{Route, Routes},
};

type Body = BoxBody<Bytes, hyper::Error>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A test upstream: answers as `name`, counting requests.
struct Upstream_ {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    tasks: Mutex<JoinSet<()>>,
}

impl Upstream_ {
    fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint::new(id.to_owned(), "127.0.0.1", self.addr.port())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and drops every open connection.
    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Shared gates for the streaming test.
#[derive(Default)]
struct Gates {
    upstream_received: AtomicU64,
    client_received: AtomicU64,
}

async fn handle(
    name: &'static str,
    gates: Arc<Gates>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if path == "/stall" {
        // Headers and a first chunk, then nothing, forever.
        let stream = futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(
                b"partial",
            )))]),
            futures_util::stream::pending(),
        );
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    if path == "/fail" {
        return Ok(Response::builder().status(500).body(full("boom")).unwrap());
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                if let Ok(data) = data {
                    total += data.len() as u64;
                    gates.upstream_received.store(total, Ordering::SeqCst);
                }
            } else {
                break;
            }
        }
        return Ok(Response::new(full(total.to_string())));
    }
    if path == "/download" {
        // 10 MiB in 64 KiB frames; the second half is produced only after
        // the client has received the first half, so a proxy that buffered
        // whole bodies would never finish.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            for i in 0..160 {
                if i == 80 {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while gates.client_received.load(Ordering::SeqCst) < 5 * 1024 * 1024 {
                        if tokio::time::Instant::now() > deadline {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                    return;
                }
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_owned(),
            serde_json::Value::String(v.to_str().unwrap_or("?").to_owned()),
        );
    }
    let body = serde_json::json!({
        "name": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    Ok(Response::builder()
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "1")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap())
}

async fn start_upstream(name: &'static str, gates: Arc<Gates>) -> Upstream_ {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = Upstream_ {
        addr,
        hits: hits.clone(),
        tasks: Mutex::new(JoinSet::new()),
    };
    let conns = Arc::new(Mutex::new(JoinSet::new()));
    let conns2 = conns.clone();
    upstream.tasks.lock().unwrap().spawn(async move {
        let _guard = AbortOnDrop(conns2.clone());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            let gates = gates.clone();
            conns2.lock().unwrap().spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    handle(name, gates.clone(), req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    upstream
}

/// Aborts the connection tasks when the accept loop is aborted.
struct AbortOnDrop(Arc<Mutex<JoinSet<()>>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.abort_all();
        }
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    send(
        Request::get(format!("http://{addr}{path}"))
            .body(full(""))
            .unwrap(),
    )
    .await
}

async fn send(req: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("gateway answered in time")
        .expect("gateway answered");
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not json: {}", String::from_utf8_lossy(body)))
}

fn upstream_of(name: &str, discovery: &StaticDiscovery) -> tower_gateway::proxy::UpstreamService {
    Upstream::new(name.to_owned(), discovery.watch())
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_hop_by_hop_removed_and_forwarding_headers_set() {
    let a = start_upstream("a", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let table = Routes::builder()
        .route(Route::prefix("/orders").upstream(upstream_of("orders", &discovery)))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let req = Request::get(format!("http://{gw}/orders/7?x=1"))
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-keep", "yes")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, 200);
    let seen = json(&body);
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/orders/7?x=1");
    // Headers named in `Connection` are removed by the edge (the library
    // server), the fixed hop-by-hop list by the proxy.
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_ne!(h["connection"].as_str(), Some("keep-alive, x-hop"));
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-keep"], "yes");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["via"], "1.1 tower-gateway");
    assert_eq!(
        h["host"].as_str().unwrap(),
        format!("127.0.0.1:{}", a.addr.port())
    );
    // Hop-by-hop headers of the response are removed too.
    assert!(headers.get("x-upstream-hop").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_with_404_405_and_prefix_stripping() {
    let a = start_upstream("orders", Arc::default()).await;
    let b = start_upstream("payments", Arc::default()).await;
    let orders = StaticDiscovery::new([a.endpoint("a")]);
    let payments = StaticDiscovery::new([b.endpoint("b")]);
    let table = Routes::builder()
        .route(
            Route::prefix("/orders")
                .methods([Method::GET, Method::POST])
                .upstream(upstream_of("orders", &orders)),
        )
        .route(
            Route::prefix("/api/payments")
                .strip_prefix()
                .upstream(upstream_of("payments", &payments)),
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let (s, _, body) = get(gw, "/orders/1").await;
    assert_eq!(
        (s, json(&body)["name"].as_str()),
        (StatusCode::OK, Some("orders"))
    );
    let (s, _, body) = get(gw, "/api/payments/9?q=2").await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["path"], "/9?q=2");
    let (s, _, body) = get(gw, "/api/payments").await;
    assert_eq!(
        (s, json(&body)["path"].as_str()),
        (StatusCode::OK, Some("/"))
    );
    let (s, h, body) = get(gw, "/ordersX").await;
    assert_eq!(s, 404);
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(!String::from_utf8_lossy(&body).contains("127.0.0.1"));
    let (s, h, _) = send(
        Request::delete(format!("http://{gw}/orders/1"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 405);
    assert_eq!(h["allow"], "GET, HEAD, POST");
    // HEAD is served wherever GET is.
    let (s, _, _) = send(
        Request::head(format!("http://{gw}/orders/1"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    // Normalized before matching: the upstream receives the normalized path.
    let (s, _, body) = get(gw, "/public/%2e%2e/orders//7").await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["path"], "/orders/7");
    let (s, _, _) = get(gw, "/orders%2f7").await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_streams_both_ways_without_buffering() {
    let gates = Arc::new(Gates::default());
    let a = start_upstream("a", gates.clone()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream_of("big", &discovery)))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;

    // Upload: the second half is sent only once the upstream has the first.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    let g = gates.clone();
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![1u8; 64 * 1024]);
        for i in 0..160 {
            if i == 80 {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while g.upstream_received.load(Ordering::SeqCst) < 5 * 1024 * 1024 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the proxy did not stream the request body"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = Request::post(format!("http://{gw}/upload"))
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    let (s, _, body) = send(req).await;
    producer.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(body, (10 * 1024 * 1024).to_string());

    // Download: the upstream waits for the client to have the first half.
    let resp = client()
        .request(
            Request::get(format!("http://{gw}/download"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
                gates.client_received.store(total, Ordering::SeqCst);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the proxy did not stream the response body");
    assert_eq!(total, 10 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_discovery_changes_with_no_failed_requests() {
    let a = start_upstream("a", Arc::default()).await;
    let b = start_upstream("b", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    // The default balancer (least request) sends a new endpoint traffic at
    // once, even without load.
    let upstream = Upstream::new("svc", discovery.watch()).build().unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    // Phase 1: only a.
    for i in 0..50 {
        let (s, _, body) = get(gw, "/x").await;
        assert_eq!(
            (s, json(&body)["name"].as_str()),
            (StatusCode::OK, Some("a")),
            "request {i}"
        );
    }
    // Phase 2: b joins; under concurrent load peak-EWMA spreads requests.
    discovery.set([a.endpoint("a"), b.endpoint("b")]);
    let mut seen_b = 0;
    for batch in 0..10 {
        let mut calls = JoinSet::new();
        for _ in 0..10 {
            calls.spawn(get(gw, "/x"));
        }
        while let Some(result) = calls.join_next().await {
            let (s, _, body) = result.unwrap();
            assert_eq!(s, 200, "a request of batch {batch} failed");
            if json(&body)["name"] == "b" {
                seen_b += 1;
            }
        }
    }
    assert!(
        seen_b >= 5,
        "the added endpoint got {seen_b} of 100 requests"
    );
    // Phase 3: a leaves discovery, then dies; nothing fails and nothing
    // reaches it after the change.
    discovery.set([b.endpoint("b")]);
    let hits_a = a.hits();
    for i in 0..100 {
        if i == 10 {
            a.kill();
        }
        let (s, _, body) = get(gw, "/x").await;
        assert_eq!(s, 200, "request {i} failed");
        assert_eq!(
            json(&body)["name"],
            "b",
            "request {i} went to a removed endpoint"
        );
    }
    assert_eq!(a.hits(), hits_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_is_routed_around_and_unsafe_requests_are_not_retried() {
    let a = start_upstream("a", Arc::default()).await;
    let b = start_upstream("b", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a"), b.endpoint("b")]);
    let upstream = Upstream::new("svc", discovery.watch())
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(5))
        .retries(RetryConfig::default().attempts(3))
        .circuit(CircuitConfig::default().consecutive_failures(Some(2)), 0.5)
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    for _ in 0..10 {
        assert_eq!(get(gw, "/x").await.0, 200);
    }
    a.kill();
    // Idempotent requests never fail: connection errors are retried on the
    // other endpoint, and the dead one is ejected.
    for i in 0..100 {
        let (s, _, body) = get(gw, "/x").await;
        assert_eq!(s, 200, "GET {i} failed");
        assert_eq!(json(&body)["name"], "b");
    }
    // A POST without a body to a dead endpoint never reached it: retried
    // safely, so it succeeds too.
    for i in 0..20 {
        let (s, _, _) = send(
            Request::post(format!("http://{gw}/x"))
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "POST {i} failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_the_upstream_is_not_retried() {
    // An upstream that reads the request and then drops the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = stream.read(&mut buf).await
                    && n > 0
                {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                drop(stream);
            });
        }
    });
    let discovery = StaticDiscovery::new([Endpoint::new("dropper", "127.0.0.1", addr.port())]);
    let upstream = Upstream::new("dropper", discovery.watch())
        .retries(RetryConfig::default().attempts(3))
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    let (s, _, body) = send(
        Request::post(format!("http://{gw}/pay"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 502);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a POST that reached the upstream was retried"
    );
    assert!(!String::from_utf8_lossy(&body).contains(&addr.port().to_string()));
    // A GET is idempotent: retried (every attempt reaches the dropper).
    seen.store(0, Ordering::SeqCst);
    let (s, _, _) = get(gw, "/x").await;
    assert_eq!(s, 502);
    assert!(
        seen.load(Ordering::SeqCst) > 1,
        "an idempotent request was not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_failures_are_502_503_504_without_internal_detail() {
    let a = start_upstream("a", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let slow = Upstream::new("slow", discovery.watch())
        .request_timeout(Duration::from_millis(200))
        .retries(RetryConfig::none())
        .build()
        .unwrap();
    let dead = StaticDiscovery::new([Endpoint::new("dead", "127.0.0.1", 1)]);
    let empty = StaticDiscovery::new([]);
    let table = Routes::builder()
        .route(Route::prefix("/slow").upstream(slow))
        .route(Route::prefix("/dead").upstream(upstream_of("dead", &dead)))
        .route(Route::prefix("/empty").upstream(upstream_of("empty", &empty)))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let (s, h, body) = get(gw, "/slow").await;
    assert_eq!(s, 504);
    assert_eq!(h["content-type"], "application/problem+json");
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("Elapsed") && !text.contains("error"),
        "{text}"
    );
    let (s, _, body) = get(gw, "/dead").await;
    assert_eq!(s, 502);
    assert!(!String::from_utf8_lossy(&body).contains("refused"));
    let (s, h, _) = get(gw, "/empty").await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "1");
    for (path, code) in [("/slow", "4"), ("/dead", "14"), ("/empty", "14")] {
        let req = Request::post(format!("http://{gw}{path}"))
            .header("content-type", "application/grpc")
            .body(full(""))
            .unwrap();
        let (s, h, _) = send(req).await;
        assert_eq!(
            (s, h["grpc-status"].to_str().unwrap()),
            (StatusCode::OK, code),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let a = start_upstream("a", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream_of("ws", &discovery)))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/ws")
        .header("host", "gw")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full(""))
        .unwrap();
    let mut resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_while_the_others_serve() {
    let bad = start_upstream("bad", Arc::default()).await;
    let good = start_upstream("good", Arc::default()).await;
    let discovery = StaticDiscovery::new([bad.endpoint("bad"), good.endpoint("good")]);
    let upstream = Upstream::new("svc", discovery.watch())
        .retries(RetryConfig::none())
        .circuit(
            CircuitConfig::default()
                .consecutive_failures(Some(3))
                .open_duration(Duration::from_secs(30), Duration::from_secs(60)),
            0.5,
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    // The bad endpoint goes down; its breaker counts the connection errors
    // and ejects it, so only the first few requests fail (no retries here).
    bad.kill();
    let mut failures = 0;
    for _ in 0..60 {
        let (s, _, _) = get(gw, "/x").await;
        if s != 200 {
            failures += 1;
        }
    }
    assert!(
        failures <= 3,
        "{failures} requests failed before the endpoint was ejected"
    );
    assert_eq!(bad.hits(), 0);
    assert!(good.hits() >= 57);
}

/// gRPC through the proxy: HTTP/2 to the gateway, HTTP/2 (h2c) to a tonic
/// upstream, trailers (`grpc-status`) passed back; a streaming call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_and_streams_pass_through_with_trailers() {
    use tonic::transport::{Endpoint as GrpcEndpoint, server::TcpIncoming};
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tower_gateway::proxy::UpstreamProtocol;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _reporter = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    let discovery = StaticDiscovery::new([Endpoint::new("grpc-1", "127.0.0.1", grpc_addr.port())]);
    let upstream = Upstream::new("health", discovery.watch())
        .protocol(UpstreamProtocol::Http2)
        .build()
        .unwrap();
    let table = Routes::builder()
        .route(Route::prefix("/grpc.health.v1.Health").upstream(upstream))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let channel = GrpcEndpoint::from_shared(format!("http://{gw}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .expect("check through the proxy");
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    // An error status travels in the trailers.
    let status = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    // Server streaming: the first message of a watch arrives.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
}

/// An upstream that sends its headers and then stalls does not hold the
/// client forever: the body fails after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_fails_after_the_idle_timeout() {
    let a = start_upstream("a", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let upstream = Upstream::new("stall", discovery.watch())
        .body_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;
    let response = client()
        .request(
            Request::get(format!("http://{gw}/stall"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the stalled body ended");
    assert!(body.is_err(), "a stalled body completed normally");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// A route's own timeout is tighter than its upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_upstream_timeout() {
    let a = start_upstream("a", Arc::default()).await;
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    let upstream = Upstream::new("svc", discovery.watch())
        .request_timeout(Duration::from_secs(30))
        .retries(RetryConfig::none())
        .build()
        .unwrap();
    let table = Routes::builder()
        .route(
            Route::prefix("/slow")
                .timeout(Duration::from_millis(200))
                .upstream(upstream.clone()),
        )
        .route(Route::prefix("/x").upstream(upstream))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let started = std::time::Instant::now();
    let (s, h, _) = get(gw, "/slow").await;
    assert_eq!(s, 504);
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(get(gw, "/x").await.0, 200);
}

/// An upstream is built before any runtime exists; discovery changes made
/// before it is served are applied by its first request.
#[test]
fn upstream_builds_outside_a_runtime_and_follows_discovery_once_served() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = runtime.block_on(start_upstream("a", Arc::default()));
    let b = runtime.block_on(start_upstream("b", Arc::default()));
    let discovery = StaticDiscovery::new([a.endpoint("a")]);
    assert!(tokio::runtime::Handle::try_current().is_err());
    let upstream = upstream_of("svc", &discovery);
    // Published before the upstream serves: its first request sees it.
    discovery.set([b.endpoint("b")]);
    runtime.block_on(async {
        let gw = support_proxy::serve_one(upstream).await;
        for i in 0..5 {
            let (s, _, body) = get(gw, "/x").await;
            assert_eq!(
                (s, json(&body)["name"].as_str()),
                (StatusCode::OK, Some("b")),
                "request {i}"
            );
        }
        // Later changes are followed in the background.
        discovery.set([a.endpoint("a")]);
        let mut last = String::new();
        for _ in 0..100 {
            let (_, _, body) = get(gw, "/x").await;
            last = json(&body)["name"].as_str().unwrap_or_default().to_owned();
            if last == "a" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            last, "a",
            "a change after the first request was not applied"
        );
    });
}
