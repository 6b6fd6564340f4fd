#![cfg(all(
    feature = "jwks",
    feature = "rbac",
    feature = "metrics",
    feature = "ratelimit",
    feature = "proxy",
    feature = "tls"
))]
//! Black-box and fault tests: the reference gateway attacked over raw
//! sockets (smuggling, oversized and duplicated headers, slow clients,
//! spoofed forwarding headers, rate-limit evasion), and the proxy in front
//! of upstreams that misbehave (hang, reset, garbage, stalled bodies, many
//! requests at once).

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code)]
mod app;

mod support_proxy;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_gateway::{
    discovery::{Endpoint, StaticDiscovery},
    proxy::{RetryConfig, Upstream, UpstreamProtocol},
    route::{Route, Routes},
};

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over a socket.

/// Sends `request` as bytes and reads until the server closes or `wait`
/// passes; returns what was read.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of the first response in `text` (0 when there is none).
fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The reference gateway.

struct Gateway {
    addr: SocketAddr,
    auth: SocketAddr,
}

impl Gateway {
    async fn start(per_second: u32) -> Self {
        Self::start_with(app::Config {
            per_second,
            ..test_config()
        })
        .await
    }

    async fn start_with(config: app::Config) -> Self {
        let running = app::start(config)
            .await
            .expect("the reference gateway starts");
        Self {
            addr: running.gateway,
            auth: running.auth,
        }
    }

    /// An access token for a demo user (the password grant, as the public
    /// `demo-cli` client).
    async fn token(&self, user: &str) -> String {
        let password = app::auth_server::USERS
            .iter()
            .find(|u| u.name == user)
            .expect("a demo user")
            .password;
        let form =
            format!("grant_type=password&client_id=demo-cli&username={user}&password={password}");
        let text = raw(
            self.auth,
            format!(
                "POST /token HTTP/1.1\r\nHost: auth\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
                form.len()
            )
            .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&text), 200, "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str::<Value>(body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One request on its own connection; `extra` is raw header lines.
    async fn request(&self, method: &str, path: &str, token: Option<&str>, extra: &str) -> String {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        raw(
            self.addr,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: gw\r\n{auth}{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(10),
        )
        .await
    }
}

fn test_config() -> app::Config {
    app::Config {
        gateway: "127.0.0.1:0".parse().unwrap(),
        auth: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        ..app::Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_headers_are_refused_and_never_fail_other_clients_requests() {
    let gw = Arc::new(Gateway::start(10_000).await);
    let token = Arc::new(gw.token("alice").await);
    // Alone: a client's oversized header is the client's fault (4xx), never
    // a 502.
    for size in [20_000, 40_000, 100_000, 300_000] {
        let big = "a".repeat(size);
        let text = gw
            .request(
                "GET",
                "/inventory",
                Some(&token),
                &format!("X-Big: {big}\r\n"),
            )
            .await;
        let status = status_of(&text);
        assert!((400..500).contains(&status), "{size}: {status}");
    }
    // Meanwhile, other clients' requests on the shared upstream connection
    // all succeed.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (gw, token) = (gw.clone(), token.clone());
        tasks.spawn(async move {
            let big = "b".repeat(100_000);
            for _ in 0..15 {
                let text = gw
                    .request(
                        "GET",
                        "/inventory",
                        Some(&token),
                        &format!("X-Big: {big}\r\n"),
                    )
                    .await;
                assert!((400..500).contains(&status_of(&text)), "{}", &text[..40]);
            }
            Vec::new()
        });
    }
    for _ in 0..10 {
        let (gw, token) = (gw.clone(), token.clone());
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..30 {
                statuses.push(status_of(
                    &gw.request("GET", "/inventory", Some(&token), "").await,
                ));
            }
            statuses
        });
    }
    while let Some(statuses) = tasks.join_next().await {
        let statuses = statuses.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
}

// ---------------------------------------------------------------------------
// The proxy alone, in front of upstreams that misbehave.

type Body = BoxBody<Bytes, hyper::Error>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTTP/1.1 and HTTP/2 upstream (hyper's defaults) that answers with the
/// request's headers as JSON, after `delay`.
async fn echo_upstream(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    let mut headers = serde_json::Map::new();
                    for (k, v) in req.headers() {
                        let v = v.to_str().unwrap_or("?").to_owned();
                        match headers.get_mut(k.as_str()) {
                            Some(Value::Array(all)) => all.push(Value::String(v)),
                            _ => {
                                headers.insert(
                                    k.as_str().to_owned(),
                                    Value::Array(vec![Value::String(v)]),
                                );
                            }
                        }
                    }
                    Ok::<_, Infallible>(Response::new(full(Value::Object(headers).to_string())))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP upstream that does `behave` with every connection.
async fn raw_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(behave(stream));
        }
    });
    addr
}

/// Reads one request head.
async fn read_head(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn upstream(name: &str, addr: SocketAddr) -> Upstream {
    let discovery =
        StaticDiscovery::new([Endpoint::new(format!("{name}-1"), "127.0.0.1", addr.port())]);
    let watch = discovery.watch();
    // The discovery source must outlive the test.
    std::mem::forget(discovery);
    Upstream::new(name.to_owned(), watch)
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(request: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body in time")
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    send(
        Request::get(format!("http://{addr}{path}"))
            .body(full(""))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_headers_never_reach_an_http2_upstream_and_break_its_connection() {
    let echo = echo_upstream(Duration::from_millis(20)).await;
    let table = Routes::builder()
        .route(
            Route::prefix("/").upstream(
                upstream("echo", echo)
                    .protocol(UpstreamProtocol::Http2)
                    .retries(RetryConfig::none())
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        tasks.spawn(async move {
            let mut request = Request::get(format!("http://{gw}/x"));
            if i % 4 == 0 {
                request = request.header("x-big", "a".repeat(100_000));
            }
            (i % 4 == 0, send(request.body(full("")).unwrap()).await.0)
        });
    }
    while let Some(result) = tasks.join_next().await {
        let (big, status) = result.unwrap();
        if big {
            assert_eq!(status, 431);
        } else {
            assert_eq!(status, 200, "an ordinary request failed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_do_not_reach_the_upstream_unchecked() {
    let echo = echo_upstream(Duration::ZERO).await;
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream("echo", echo).build().unwrap()))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let request = Request::get(format!("http://{gw}/x"))
        .header("host", "shop.example")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("via", "1.1 evil")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert!(seen.get("forwarded").is_none(), "{seen}");
    assert!(seen.get("x-real-ip").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        seen["x-forwarded-host"],
        serde_json::json!(["shop.example"])
    );
    assert_eq!(
        seen["via"],
        serde_json::json!(["1.1 evil, 1.1 tower-gateway"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_headers_are_refused_and_absolute_form_wins_over_host() {
    let echo = echo_upstream(Duration::ZERO).await;
    let table = Routes::builder()
        .route(
            Route::prefix("/")
                .host("shop.example")
                .upstream(upstream("shop", echo).build().unwrap()),
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let text = raw(
        gw,
        b"GET /x HTTP/1.1\r\nHost: shop.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), 400, "{text}");
    // An absolute-form target names the host; `Host` is ignored (RFC 9112
    // §3.2.2) by routing and forwarding alike.
    let text = raw(
        gw,
        b"GET http://evil.example/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), 404, "{text}");
    let text = raw(
        gw,
        b"GET http://shop.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(
        text.contains(r#""x-forwarded-host":["shop.example"]"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_upstreams_are_502_and_504_in_bounded_time() {
    let garbage = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02garbage\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let reset = raw_upstream(|s| async move {
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let closes = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
    })
    .await;
    let bad_length = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let hangs = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let table = Routes::builder()
        .route(Route::prefix("/garbage").upstream(upstream("garbage", garbage).build().unwrap()))
        .route(Route::prefix("/reset").upstream(upstream("reset", reset).build().unwrap()))
        .route(Route::prefix("/closes").upstream(upstream("closes", closes).build().unwrap()))
        .route(Route::prefix("/length").upstream(upstream("length", bad_length).build().unwrap()))
        .route(
            Route::prefix("/hangs").upstream(
                upstream("hangs", hangs)
                    .request_timeout(Duration::from_millis(500))
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    for (path, expected) in [
        ("/garbage", 502),
        ("/reset", 502),
        ("/closes", 502),
        ("/length", 502),
        ("/hangs", 504),
    ] {
        let started = Instant::now();
        let (status, headers, body) = get(gw, path).await;
        assert_eq!(status, expected, "{path}");
        assert!(started.elapsed() < Duration::from_secs(3), "{path}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("127.0.0.1"), "{path}: {text}");
        // POST (not retried) too.
        let (status, _, _) = send(
            Request::post(format!("http://{gw}{path}"))
                .body(full("x"))
                .unwrap(),
        )
        .await;
        assert_eq!(status, expected, "POST {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_body_is_streamed() {
    let slow = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let table = Routes::builder()
        .route(
            Route::prefix("/").upstream(
                upstream("slow", slow)
                    .request_timeout(Duration::from_secs(1))
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let started = Instant::now();
    let response = client()
        .request(
            Request::get(format!("http://{gw}/x"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The request timeout bounds the head, not a body that keeps coming.
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_in_flight_all_succeed() {
    let echo = echo_upstream(Duration::from_millis(200)).await;
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream("echo", echo).build().unwrap()))
        .build()
        .unwrap();
    let gw = support_proxy::serve(table).await;
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let served = served.clone();
        tasks.spawn(async move {
            let (status, _, _) = get(gw, "/x").await;
            assert_eq!(status, 200);
            served.fetch_add(1, Ordering::SeqCst);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    assert_eq!(served.load(Ordering::SeqCst), 200);
}

// ---------------------------------------------------------------------------
// The reference gateway, attacked.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed() {
    let gw = Gateway::start_with(app::Config {
        server: tower_gateway::server::Limits {
            header_read_timeout: Duration::from_millis(800),
            ..tower_gateway::server::Limits::default()
        },
        ..test_config()
    })
    .await;
    // Silent: connects, sends nothing.
    let silent = tokio::spawn(async move {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        (closed.is_ok(), started.elapsed())
    });
    // Slowloris: a header byte every 200 ms, never finishing.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            // 408 or a plain close: either ends the connection.
            let _ = n;
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris connection stayed open");
    let (closed, after) = silent.await.unwrap();
    assert!(closed && after < Duration::from_secs(3), "{after:?}");
    // A well-behaved client on a keep-alive connection is served.
    let text = raw(
        gw.addr,
        b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\nGET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_tricks_are_refused() {
    let gw = Gateway::start(100).await;
    let token = gw.token("alice").await;
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (what, head) in [
        ("two Host", "Host: a\r\nHost: b\r\n"),
        ("no Host", ""),
        ("user info", "Host: alice@evil\r\n"),
        ("space", "Host: a b\r\n"),
    ] {
        let text = raw(
            gw.addr,
            format!("GET /inventory HTTP/1.1\r\n{head}{auth}Connection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&text), 400, "{what}: {text}");
    }
    // An absolute-form target is served by its path; it never picks the
    // upstream.
    let text = raw(
        gw.addr,
        format!("GET http://evil.example/inventory HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    // HTTP/1.0 needs no Host.
    let text = raw(
        gw.addr,
        format!("GET /inventory HTTP/1.0\r\n{auth}\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_yield_a_second_request() {
    let gw = Gateway::start(1000).await;
    let token = gw.token("alice").await;
    let auth = format!("Authorization: Bearer {token}\r\n");
    let smuggled = "GET /orders HTTP/1.1\r\nHost: gw\r\n\r\n";
    for (what, head, body) in [
        (
            "CL+TE",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            format!("0\r\n\r\n{smuggled}"),
        ),
        (
            "two CL",
            "Content-Length: 4\r\nContent-Length: 40\r\n",
            format!("{{}}\r\n{smuggled}"),
        ),
        (
            "TE obfuscated",
            "Transfer-Encoding: xchunked\r\n",
            format!("0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            "Content-Length: 2\r\nX-Fold: a\r\n b\r\n",
            format!("{{}}{smuggled}"),
        ),
    ] {
        let text = raw(
            gw.addr,
            format!(
                "POST /orders HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n{head}\r\n{body}"
            )
            .as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        // `GET /orders` is for admins: a smuggled one would be a 401 (no
        // token) or 403; at most one response comes back.
        assert!(text.matches("HTTP/1.1 ").count() <= 1, "{what}: {text}");
        let status = status_of(&text);
        assert!(
            status == 0 || (400..500).contains(&status),
            "{what}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_headers_neither_evade_nor_share_rate_limits() {
    let gw = Gateway::start(3).await;
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // Every request claims another client and another user.
        let spoof = format!(
            "X-Forwarded-For: 198.51.100.{i}\r\nForwarded: for=198.51.100.{i}\r\nX-Real-IP: 198.51.100.{i}\r\nX-User-Id: user{i}\r\nX-User-Roles: admin\r\n"
        );
        statuses.push(status_of(
            &gw.request("GET", "/inventory", Some(&alice), &spoof).await,
        ));
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let refused = gw.request("GET", "/inventory", Some(&alice), "").await;
    assert_eq!(status_of(&refused), 429);
    let lower = refused.to_ascii_lowercase();
    let retry_after: u64 = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{refused}");
    assert!(lower.contains("\r\nratelimit: "), "{refused}");
    assert!(lower.contains("\r\nratelimit-policy: "), "{refused}");
    assert!(lower.contains("application/problem+json"), "{refused}");
    // Spoofed admin roles gave no admin quota or access.
    assert_eq!(
        status_of(
            &gw.request("GET", "/orders", Some(&bob), "X-User-Roles: admin\r\n")
                .await
        ),
        403
    );
    // Bob's quota is his own.
    assert_eq!(
        status_of(&gw.request("GET", "/inventory", Some(&bob), "").await),
        200
    );
}
