//! Per-request cost of `server::serve` (edge checks, hop-by-hop removal,
//! body and response wrappers, stream tracking) over a bare hyper-util
//! accept loop serving the same service.
//!
//! Both serve one keep-alive HTTP/1.1 connection on loopback; each figure
//! is one request and its response, read against
//! `reference_bare_hyper_util`, measured in the same run.
//!
//! Run: `cargo bench --bench server`.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower_gateway::server;

fn ok<B>() -> impl tower::Service<
    Request<B>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_request: Request<B>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

async fn bare() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        TowerToHyperService::new(ok::<hyper::body::Incoming>()),
                    )
                    .into_owned(),
            );
        }
    });
    addr
}

async fn library() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serve = server::serve(listener, ok::<server::Body>());
    let addr = serve.local_addr().unwrap();
    tokio::spawn(serve.into_future());
    addr
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let (bare, library) = rt.block_on(async { (bare().await, library().await) });
    let mut group = c.benchmark_group("server");
    for (name, addr) in [
        ("reference_bare_hyper_util", bare),
        ("server_serve", library),
    ] {
        let uri: http::Uri = format!("http://{addr}/orders").parse().unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let request = Request::get(uri.clone())
                    .header("host", "gw")
                    .body(Empty::new())
                    .unwrap();
                let response = client.request(request).await.unwrap();
                response.into_body().collect().await.unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
