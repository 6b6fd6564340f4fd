// A gateway of three routes, each declared once: admin-only `GET /orders`,
// `POST /orders` for users, `/payments` for any valid token (2 requests per
// second per consumer), a public `/public`; a per-IP limit can be left out.
use http::Method;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};
use tower_gateway::auth::{AuthMode, Issuer, JwtAuthLayer, JwtKey};
use tower_gateway::discovery::{Endpoint, StaticDiscovery};
use tower_gateway::proxy::{Proxy, Upstream};
use tower_gateway::ratelimit::{ClientIp, Consumer, Limit, RateLimitLayer, RouteRateLimitLayer};
use tower_gateway::{rbac::RbacLayer, rbac::Requirement::Authenticated, route::*, server};

/// Serves the gateway on `listener`, in front of the service at `app`.
#[rustfmt::skip] // one route per line group; rustfmt would stack every call
pub async fn gateway(listener: TcpListener, app: SocketAddr, per_ip: Option<u32>)
    -> Result<(), BoxError> {
    let app = Endpoint::new("app-1", app.ip().to_string(), app.port());
    let app = Upstream::new("app", StaticDiscovery::new([app]).watch()).build()?;
    let limit = |n| Limit::new().per_second(n);
    let payments = RateLimitLayer::builder().key(Consumer::subject()).limit(limit(2)).build()?;
    let routes = Routes::builder()
        .route(Route::exact("/orders").methods([Method::GET, Method::POST]).upstream(app.clone())
            .roles([Method::GET], ["admin"]).roles([Method::POST], ["user", "admin"]))
        .route(Route::prefix("/payments").upstream(app.clone())
            .allow([], Authenticated).rate_limit(&payments))
        .route(Route::prefix("/public").upstream(app).auth(AuthMode::None))
        .build()?;
    let per_ip = per_ip.map(|n| RateLimitLayer::builder().key(ClientIp::peer()).limit(limit(n)));
    let key = JwtKey::hmac(b"a-32-byte-secret-from-your-vault");
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes)) // matched once; 404 and 405 here
        .option_layer(per_ip.map(|b| b.build()).transpose()?) // off: the same stack type
        .layer(JwtAuthLayer::builder().issuer(Issuer::new("https://example.com").key(key)).build()?)
        .layer(RbacLayer::default()) // the routes' role rules
        .layer(RouteRateLimitLayer::new()) // the routes' limits
        .service(Proxy::new(&routes)); // the routes' upstreams
    server::serve(listener, stack).await; // renders every refusal, once
    Ok(())
}
