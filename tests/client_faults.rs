//! A client's faults are the client's: malformed, incomplete or stalled
//! request bodies get 400 or 408 — never 502 or 504 — and never count
//! against the upstream's circuit breaker; request trailers are not
//! forwarded where the upstream hop cannot carry them. Raw TCP clients on
//! loopback.
#![cfg(feature = "proxy")]

mod support_proxy;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_gateway::{
    circuit::CircuitConfig,
    discovery::{Endpoint, StaticDiscovery},
    proxy::Upstream,
    route::{Route, Routes},
};

/// An upstream that reads the whole body and answers with its size; it
/// records the trailers it received and counts hits.
#[derive(Clone, Default)]
struct Seen {
    hits: Arc<AtomicUsize>,
    trailers: Arc<Mutex<Vec<String>>>,
}

async fn start_upstream(seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let collected = req.into_body().collect().await;
                        let text = match collected {
                            Ok(collected) => {
                                if let Some(trailers) = collected.trailers() {
                                    seen.trailers
                                        .lock()
                                        .unwrap()
                                        .extend(trailers.keys().map(|k| k.as_str().to_owned()));
                                }
                                collected.to_bytes().len().to_string()
                            }
                            Err(_) => "error".to_owned(),
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gateway over two endpoints of one upstream (both on `addr`) whose
/// breakers open on the first failure, with a route timeout of `timeout`.
async fn gateway(addr: SocketAddr, timeout: Duration) -> SocketAddr {
    let discovery = StaticDiscovery::new([
        Endpoint::new("e1", "127.0.0.1", addr.port()),
        Endpoint::new("e2", "localhost", addr.port()),
    ]);
    let upstream = Upstream::new("svc", discovery.watch())
        .circuit(
            CircuitConfig::default()
                .consecutive_failures(Some(1))
                .minimum_calls(1),
            0.5,
        )
        .build()
        .unwrap();
    support_proxy::serve(
        Routes::builder()
            .route(Route::prefix("/").timeout(timeout).upstream(upstream))
            .build()
            .unwrap(),
    )
    .await
}

/// Writes `raw` (and half-closes when `close`), then reads the response
/// head's status line within 5 s.
async fn raw(gw: SocketAddr, raw: &str, close: bool) -> String {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    if close {
        stream.shutdown().await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the gateway answered within 5 s");
    String::from_utf8_lossy(&got).into_owned()
}

fn status(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

/// Both endpoints still serve: neither breaker counted the client faults.
async fn both_endpoints_serve(gw: SocketAddr, seen: &Seen) {
    let before = seen.hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        let response = raw(
            gw,
            "GET /ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(status(&response), "200", "{response}");
    }
    assert_eq!(seen.hits.load(Ordering::SeqCst) - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_400_and_not_an_upstream_failure() {
    let seen = Seen::default();
    let gw = gateway(start_upstream(seen.clone()).await, Duration::from_secs(5)).await;
    for _ in 0..4 {
        let response = raw(
            gw,
            "POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nnot a chunk\r\n",
            false,
        )
        .await;
        assert_eq!(status(&response), "400", "{response}");
    }
    both_endpoints_serve(gw, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_body_is_400_at_once_not_504() {
    let seen = Seen::default();
    let gw = gateway(start_upstream(seen.clone()).await, Duration::from_secs(30)).await;
    for _ in 0..4 {
        let started = tokio::time::Instant::now();
        let response = raw(
            gw,
            "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly forty bytes of the hundred promised",
            true,
        )
        .await;
        assert_eq!(status(&response), "400", "{response}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    both_endpoints_serve(gw, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_408_not_504() {
    let seen = Seen::default();
    let gw = gateway(
        start_upstream(seen.clone()).await,
        Duration::from_millis(500),
    )
    .await;
    for _ in 0..2 {
        // Headers and part of the body, then nothing (the connection stays
        // open): the route's deadline passes while the client owes bytes.
        let response = raw(
            gw,
            "POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\npartial",
            false,
        )
        .await;
        assert_eq!(status(&response), "408", "{response}");
    }
    both_endpoints_serve(gw, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_are_not_forwarded_over_http1() {
    let seen = Seen::default();
    let gw = gateway(start_upstream(seen.clone()).await, Duration::from_secs(5)).await;
    let response = raw(
        gw,
        "POST /x HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\nTrailer: x-user-id\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-user-id: admin\r\nx-other: 1\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(status(&response), "200", "{response}");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    assert!(
        seen.trailers.lock().unwrap().is_empty(),
        "trailers reached the upstream: {:?}",
        seen.trailers.lock().unwrap()
    );
}
