//! No few clients can starve a service: more stalled uploads than an
//! HTTP/2 upstream would allow streams, plus downloads that are never
//! read, cost only their own requests. A well-behaved request to the same
//! service completes within its normal latency plus 100 ms, and large
//! responses to other clients arrive whole.
#![cfg(feature = "proxy")]

mod support_proxy;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tower_gateway::{
    discovery::{Endpoint, StaticDiscovery},
    proxy::{Upstream, UpstreamProtocol},
};

/// 9 MiB, as in the report this test answers.
const BIG: usize = 9 * 1024 * 1024;
/// More than hyper's default HTTP/2 stream limit (200).
const STALLED_UPLOADS: usize = 250;
const UNREAD_DOWNLOADS: usize = 5;

type Body = BoxBody<Bytes, Infallible>;

async fn service(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    match req.uri().path() {
        "/upload" => {
            let size = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Ok(Response::new(
                Full::new(Bytes::from(size.to_string())).boxed(),
            ))
        }
        "/big" => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = futures_util::stream::iter(
                (0..BIG / chunk.len())
                    .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            Ok(Response::new(StreamBody::new(frames).boxed()))
        }
        _ => Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed())),
    }
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(service))
                    .await;
            });
        }
    });
    addr
}

async fn timed_get(gw: SocketAddr, path: &str) -> (Duration, usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.get(format!("http://{gw}{path}").parse().unwrap()),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (started.elapsed(), body.len())
}

async fn median_latency(gw: SocketAddr, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(timed_get(gw, "/ok").await.0);
    }
    samples.sort();
    samples[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_and_unread_downloads_cost_only_their_own_requests() {
    attack(UpstreamProtocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_stalled_uploads_and_unread_downloads_cost_only_their_own_requests() {
    attack(UpstreamProtocol::Http2).await;
}

async fn attack(protocol: UpstreamProtocol) {
    let upstream = start_upstream().await;
    let discovery = StaticDiscovery::new([Endpoint::new("svc-1", "127.0.0.1", upstream.port())]);
    let upstream = Upstream::new("svc", discovery.watch())
        .protocol(protocol)
        .build()
        .unwrap();
    let gw = support_proxy::serve_one(upstream).await;

    let normal = median_latency(gw, 21).await;

    // Stalled uploads: headers announce 100 bytes that never come.
    let mut held = Vec::new();
    for _ in 0..STALLED_UPLOADS {
        let mut stream = TcpStream::connect(gw).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // Downloads of 9 MiB whose clients never read a byte.
    for _ in 0..UNREAD_DOWNLOADS {
        let mut stream = TcpStream::connect(gw).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // Let the gateway pass them all upstream and fill what they can fill.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A large response to a well-behaved client arrives whole, meanwhile.
    let whole = tokio::spawn(timed_get(gw, "/big"));
    let during = median_latency(gw, 21).await;
    assert!(
        during <= normal + Duration::from_millis(100),
        "a normal request took {during:?} under attack, {normal:?} before"
    );
    let (_, size) = whole.await.unwrap();
    assert_eq!(size, BIG, "a large response was truncated");
    drop(held);
}
