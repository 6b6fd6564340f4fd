//! Serving a proxy route table on loopback, as a gateway's accept loop would.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc};

use http::Request;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::{
    connection::ClientAddr,
    proxy::{Proxy, Route, RouteLayer, RouteTable, UpstreamService},
};

/// Serves `table` through `RouteLayer` and `Proxy` on a free loopback port
/// (HTTP/1.1 and HTTP/2, upgrades on); every request carries its
/// `ClientAddr`.
pub async fn serve(table: Arc<RouteTable>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req
                })
                .layer(RouteLayer::new(&table))
                .service(Proxy::new(&table));
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Serves one upstream for every path.
pub async fn serve_one(upstream: UpstreamService) -> SocketAddr {
    serve(
        RouteTable::builder()
            .route(Route::prefix("/"), upstream)
            .build()
            .unwrap(),
    )
    .await
}
