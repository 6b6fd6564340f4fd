//! One gateway instance of several: it finds the `orders` service's
//! instances through Consul and shares its rate limits with the other
//! instances through Redis, so a consumer gets one limit however its
//! requests are spread over the gateways.
//!
//! - **Discovery**: a Consul blocking-query watch of the healthy (`passing`)
//!   instances of `orders`, in a background task; the proxy balances over
//!   what it reports. When Consul is down, the last known instances keep
//!   serving.
//! - **Shared limits**: [`CALLS_PER_MINUTE`] per consumer (the token's
//!   `sub`), decided by one Lua script per request on Redis, atomically and
//!   on Redis's clock. The connection is made lazily, so a gateway starts
//!   while Redis is down; until it answers (and whenever it stops), each
//!   gateway decides locally on a share of the limit (the default
//!   `FailurePolicy::Local`).
//! - **Auth**: HS256 tokens signed with a secret every instance shares;
//!   `GET` needs the role `user`, `POST` the role `admin`.
//!
//! `tests/example_two_gateways.rs` runs two of them against a real
//! `redis-server` and the Consul API double.

use std::time::Duration;

use http::Method;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};
use tower_gateway::{
    auth::{Issuer, JwtAuthLayer, JwtKey},
    discovery::consul::ConsulClient,
    proxy::{Proxy, Upstream},
    ratelimit::{Consumer, Limit, RateLimitLayer, RedisBackend, RedisConfig, RouteRateLimitLayer},
    rbac::{RbacLayer, RoleHierarchy},
    route::{Route, RouteLayer, Routes},
    server,
};

/// The `iss` the gateways accept.
pub const ISSUER: &str = "https://auth.orders.example";
/// Requests per minute per consumer, across every gateway.
pub const CALLS_PER_MINUTE: u32 = 5;
/// The Consul service the gateway routes `/orders` to.
pub const SERVICE: &str = "orders";

/// What a gateway instance needs; every instance gets the same.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://host:port/`.
    pub redis_url: String,
    /// Consul's HTTP address (`http://127.0.0.1:8500`).
    pub consul_addr: String,
    /// The HS256 secret tokens are signed with.
    pub jwt_secret: Vec<u8>,
}

/// Serves one gateway instance on `listener` until `shutdown` completes.
pub async fn gateway(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    // The watch runs as long as the upstream that follows it.
    let orders = ConsulClient::new(settings.consul_addr)?
        .watch(SERVICE)
        .wait(Duration::from_secs(30))
        .spawn()?;
    let orders = Upstream::new(SERVICE, orders.watch()).build()?;

    // Every instance uses the same key prefix and scope, so they meet on
    // the same Redis keys.
    let redis =
        RedisBackend::connect_lazy(&settings.redis_url, RedisConfig::default().prefix("gw:rl:"))?;
    let per_consumer = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_minute(CALLS_PER_MINUTE))
        .scope("orders")
        .redis(redis)
        .build()?;

    let routes = Routes::builder()
        .route(
            Route::prefix("/orders")
                .methods([Method::GET, Method::POST])
                .upstream(orders)
                .roles([Method::GET], ["user"])
                .roles([Method::POST], ["admin"])
                .rate_limit(&per_consumer),
        )
        .build()?;
    let auth = JwtAuthLayer::builder()
        .issuer(Issuer::new(ISSUER).key(JwtKey::hmac(&settings.jwt_secret)))
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes))
        .layer(auth)
        .layer(RbacLayer::default().hierarchy(RoleHierarchy::new().inherit("admin", ["user"])))
        .layer(RouteRateLimitLayer::new())
        .service(Proxy::new(&routes));
    server::serve(listener, stack)
        .with_graceful_shutdown(shutdown)
        .await;
    Ok(())
}
