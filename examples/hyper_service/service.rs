//! A bare hyper service — one `service_fn`, no framework, no router — behind
//! the crate's layers, served by the crate's `server::serve`.
//!
//! With no router of its own, the app declares its routes once in the
//! crate's route model, and `RouteLayer` matches each request once; every
//! later layer reads the matched route's settings:
//!
//! | route | methods | who | limit per consumer (token `sub`), one bucket for the `/orders` routes |
//! | --- | --- | --- | --- |
//! | `/health` | GET | anyone, the token is not looked at | none |
//! | `/orders` (exact) | GET | `admin` | 5/min |
//! | `/orders` (exact) | POST | `user` (and `admin`, by hierarchy) | 5/min |
//! | `/orders/…` | GET | `user` | 5/min |
//!
//! Everything else is refused before the handler runs: an unknown path
//! with 404, another method with 405 and `Allow`, a path that cannot be
//! normalized safely with 400. `server::serve` renders every refusal once
//! (problem JSON; gRPC status for gRPC callers), puts a deadline on every
//! wait a client can cause, and shuts down gracefully.
//!
//! `tests/examples_to_copy.rs` serves it on a loopback port and drives it
//! over real sockets.

use std::{
    convert::Infallible,
    future::Future,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};
use tower_gateway::{
    Identity,
    auth::{AuthMode, Issuer, JwtAuthLayer, JwtKey},
    ratelimit::{Consumer, Limit, RateLimitLayer, RouteRateLimitLayer},
    rbac::{RbacLayer, RoleHierarchy},
    route::{Route, RouteLayer, Routes},
    server::{self, ShutdownReport},
};

/// The `iss` the service accepts.
pub const ISSUER: &str = "https://auth.orders.example";
/// The `aud` the service accepts.
pub const AUDIENCE: &str = "orders-api";
/// Requests per minute per consumer to the `/orders` routes.
pub const CALLS_PER_MINUTE: u32 = 5;

/// Serves the service on `listener`, for tokens signed with `secret`
/// (HS256), until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    secret: &[u8],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ShutdownReport, BoxError> {
    let calls = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_minute(CALLS_PER_MINUTE))
        .build()?;
    let routes = Routes::builder()
        .route(
            Route::exact("/health")
                .methods([Method::GET])
                .auth(AuthMode::None),
        )
        .route(
            Route::exact("/orders")
                .methods([Method::GET, Method::POST])
                .roles([Method::GET], ["admin"])
                .roles([Method::POST], ["user"])
                .rate_limit(&calls),
        )
        .route(
            Route::prefix("/orders")
                .methods([Method::GET])
                .name("/orders/{id}")
                .roles([Method::GET], ["user"])
                .rate_limit(&calls),
        )
        .build()?;
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::hmac(secret)),
        )
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes)) // matched once: 404, 405, 400 here
        .layer(auth) // the route's auth mode
        .layer(RbacLayer::default().hierarchy(RoleHierarchy::new().inherit("admin", ["user"])))
        .layer(RouteRateLimitLayer::new()) // the route's limits
        .service(HyperService(hyper::service::service_fn(orders)));
    Ok(server::serve(listener, stack)
        .with_graceful_shutdown(shutdown)
        .await)
}

/// The app: a plain hyper handler. It sees only requests a route took and
/// the layers let through, with the path normalized and the caller's
/// `Identity` in the extensions.
async fn orders(request: Request<server::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = request
        .extensions()
        .get::<Identity>()
        .and_then(Identity::subject)
        .unwrap_or("-");
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => (StatusCode::OK, json!("ok")),
        (&Method::GET, "/orders") => (StatusCode::OK, json!([{ "id": 1, "item": "tea" }])),
        (&Method::POST, "/orders") => (
            StatusCode::CREATED,
            json!({ "id": 2, "item": "tea", "owner": who }),
        ),
        (&Method::GET, path) => match path.strip_prefix("/orders/").map(str::parse::<u64>) {
            Some(Ok(id)) => (
                StatusCode::OK,
                json!({ "id": id, "item": "tea", "owner": who }),
            ),
            _ => (StatusCode::NOT_FOUND, json!(null)),
        },
        _ => (StatusCode::NOT_FOUND, json!(null)),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A hyper service (always ready: its `call` takes `&self`) as a Tower
/// service, so Tower layers can wrap it. The reverse of hyper-util's
/// `TowerToHyperService`.
#[derive(Debug, Clone)]
pub struct HyperService<S>(pub S);

impl<S, R> tower::Service<R> for HyperService<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> S::Future {
        self.0.call(request)
    }
}
