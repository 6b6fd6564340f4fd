//! Serving a proxy route table on loopback, as a gateway's accept loop would.
#![allow(dead_code, unreachable_pub)]

use std::{future::IntoFuture, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::{
    proxy::{Proxy, UpstreamService},
    route::{Route, RouteLayer, Routes},
};

/// Serves `table` through `RouteLayer` and `Proxy` on a free loopback port,
/// with the library server (HTTP/1.1 and HTTP/2, upgrades, the edge layer,
/// `ClientAddr` on every request).
pub async fn serve(table: Arc<Routes>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(&table))
        .service(Proxy::new(&table));
    tokio::spawn(tower_gateway::server::serve(listener, svc).into_future());
    addr
}

/// Serves one upstream for every path.
pub async fn serve_one(upstream: UpstreamService) -> SocketAddr {
    serve(
        Routes::builder()
            .route(Route::prefix("/").upstream(upstream))
            .build()
            .unwrap(),
    )
    .await
}
