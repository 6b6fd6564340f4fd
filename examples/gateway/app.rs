//! The reference gateway, assembled from the crate's layers. `main.rs`
//! runs it; `tests/reference_gateway.rs` drives it from outside.

#[path = "auth_server.rs"]
pub mod auth_server;
#[path = "pki.rs"]
pub mod pki;
#[path = "services.rs"]
pub mod services;

use std::{any::Any, future::IntoFuture, net::SocketAddr, time::Duration};

use axum::{Router, http::Method, routing::get};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceBuilder;
use tower_gateway::{
    access_log::AccessLogLayer,
    auth::{AuthMetrics, FailureBudget, Issuer, JwtAuthLayer},
    circuit::CircuitConfig,
    discovery::{Endpoint, EndpointWatch, StaticDiscovery},
    metrics::{ConsumerMetricsLayer, GatewayMetrics, MetricsHandler, MetricsLayer},
    path::NormalizePathLayer,
    proxy::{Proxy, RetryConfig, Upstream, UpstreamMetrics, UpstreamService},
    ratelimit::{
        ClientIp, Consumer, KeyExtractor, Limit, RateLimitLayer, RateLimitMetrics,
        RouteRateLimitLayer,
    },
    rbac::{RbacLayer, RbacMetrics, Requirement, RoleHierarchy},
    route::{Route, RouteLayer, Routes},
    server::{self, Limits, ShutdownReport},
    tls::{self, MtlsClientConfig},
    trace::{RequestIdLayer, TraceLayer},
};

use self::services::Kind;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway listens on and talks to; every field has an
/// environment variable (see `main.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: SocketAddr,
    pub auth: SocketAddr,
    /// The admin listener (`ADMIN_ADDR`): `/metrics`, `/healthz`, `/readyz`.
    /// Keep it on loopback or a private network: metrics describe traffic.
    pub admin: SocketAddr,
    /// Shared rate-limit state (`REDIS_URL`); the local limiter otherwise.
    pub redis_url: Option<String>,
    /// Register and discover the services in Consul (`CONSUL_HTTP_ADDR`);
    /// a static list otherwise.
    pub consul: bool,
    /// Requests per second and per hour of one consumer (Kong's
    /// `config.second` and `config.hour`); admins get ten times as many.
    pub per_second: u32,
    pub per_hour: u32,
    /// Requests per second of one client IP before authentication (`0`:
    /// off). Caps floods of anonymous or invalid-token requests, which the
    /// per-consumer limit never sees because authentication refuses them
    /// first.
    pub per_ip_second: u32,
    /// Failed token verifications one client address may cause per minute
    /// before its token-carrying requests get 429 without being verified
    /// (`0`: off). Bounds what a forger can make the gateway spend on
    /// signature checks.
    pub auth_failures_per_minute: u32,
    /// Count requests per consumer (token subject) in metrics
    /// (`METRICS_CONSUMERS=1`). Off by default: subjects are personal data,
    /// and every scrape would carry them.
    pub metrics_consumers: bool,
    /// The server's timeouts, caps and size limits towards clients.
    pub server: Limits,
    /// Serve each service's own metrics on this port and the next two
    /// (orders, payments, inventory), as `examples/observability` expects;
    /// `None`: not served.
    pub service_metrics_port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: SocketAddr::from(([127, 0, 0, 1], 9000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            redis_url: None,
            consul: false,
            per_second: 5,
            per_hour: 1000,
            per_ip_second: 0,
            auth_failures_per_minute: 30,
            metrics_consumers: false,
            server: Limits::default(),
            service_metrics_port: None,
        }
    }
}

/// A running gateway. Dropping it leaves the gateway running (until the
/// runtime ends); [`Running::shutdown`] stops it.
pub struct Running {
    pub gateway: SocketAddr,
    pub auth: SocketAddr,
    pub admin: SocketAddr,
    pub services: Vec<(&'static str, SocketAddr)>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<ShutdownReport>,
}

impl Running {
    /// Stops the gateway gracefully: no new connections, in-flight
    /// requests finish (until `Config.server.shutdown_timeout`), then the
    /// services' Consul registrations are removed.
    pub async fn shutdown(self) -> Result<ShutdownReport, BoxError> {
        let _ = self.stop.send(());
        Ok(self.server.await?)
    }
}

/// What lives as long as the gateway serves: discovery sources and
/// watches, and the Consul registrations to remove when it stops.
#[derive(Default)]
struct Keep {
    alive: Vec<Box<dyn Any + Send>>,
    #[cfg(feature = "consul")]
    registrations: Vec<tower_gateway::discovery::consul::ConsulRegistration>,
}

impl Keep {
    /// Deregisters from Consul (a registration dropped would be removed by
    /// a task the exiting process may never run), then drops the rest.
    async fn release(self) {
        #[cfg(feature = "consul")]
        for registration in self.registrations {
            let id = registration.service_id().to_owned();
            if let Err(error) = registration.deregister().await {
                tracing::warn!(service_id = %id, %error, "consul deregistration failed");
            }
        }
        drop(self.alive);
    }
}

/// The gateway's routes to one service, each declared once: its match,
/// its upstream, its roles per method (the services' own rules, checked
/// again before a request leaves the gateway) and its rate limit.
fn routes_of(kind: Kind, upstream: &UpstreamService, limit: &RateLimitLayer) -> Vec<Route> {
    let route = |route: Route| route.upstream(upstream.clone()).rate_limit(limit);
    match kind {
        Kind::Orders => vec![
            route(Route::exact("/orders").methods([Method::GET, Method::POST]))
                .roles([Method::GET], ["admin"])
                .roles([Method::POST], ["user"]),
            route(
                Route::prefix("/orders")
                    .methods([Method::GET])
                    .name("/orders/{id}"),
            )
            .roles([Method::GET], ["user"]),
        ],
        Kind::Payments => vec![
            route(Route::exact("/payments").methods([Method::GET, Method::POST]))
                .roles([Method::GET], ["admin"])
                .roles([Method::POST], ["user"]),
        ],
        Kind::Inventory => vec![
            route(Route::exact("/inventory").methods([Method::GET]))
                .allow([Method::GET], Requirement::Authenticated),
            route(
                Route::prefix("/inventory")
                    .methods([Method::GET, Method::PUT])
                    .name("/inventory/{sku}"),
            )
            .allow([Method::GET], Requirement::Authenticated)
            .roles([Method::PUT], ["admin"]),
        ],
    }
}

/// Where the gateway finds each service's instances.
async fn discovery(
    config: &Config,
    kind: Kind,
    addr: SocketAddr,
    keep: &mut Keep,
) -> Result<EndpointWatch, BoxError> {
    #[cfg(feature = "consul")]
    if config.consul {
        use tower_gateway::discovery::consul::{ServiceCheck, ServiceRegistration};
        let consul = tower_gateway::discovery::consul::ConsulClientBuilder::from_env().build()?;
        let registration = consul
            .register(
                ServiceRegistration::new(kind.name(), format!("{}-{}", kind.name(), addr.port()))
                    .address(addr.ip().to_string())
                    .port(addr.port())
                    .tags(["tower-gateway-example"])
                    .check(
                        ServiceCheck::ttl(Duration::from_secs(10))
                            .deregister_critical_service_after(Duration::from_secs(60)),
                    ),
            )
            .await?;
        let watch = consul.watch(kind.name()).spawn()?;
        watch.wait_for_sync(Duration::from_secs(5)).await;
        let view = watch.watch();
        keep.registrations.push(registration);
        keep.alive.push(Box::new(watch));
        return Ok(view);
    }
    let _ = config;
    let source = StaticDiscovery::new([Endpoint::new(
        format!("{}-1", kind.name()),
        addr.ip().to_string(),
        addr.port(),
    )]);
    let view = source.watch();
    keep.alive.push(Box::new(source));
    Ok(view)
}

/// Starts the auth server, the three services and the gateway.
pub async fn start(config: Config) -> Result<Running, BoxError> {
    // The dev auth server signs with jsonwebtoken before any layer is
    // built; with both JWT backends compiled in (`--all-features`) it must
    // find the crate's choice in place, not pick one itself.
    tower_gateway::auth::install_crypto_backend();
    #[cfg(not(feature = "redis"))]
    if config.redis_url.is_some() {
        tracing::warn!(
            "REDIS_URL is set, but this build lacks the `redis` feature: limits stay local"
        );
    }
    #[cfg(not(feature = "consul"))]
    if config.consul {
        tracing::warn!(
            "CONSUL_HTTP_ADDR is set, but this build lacks the `consul` feature: discovery stays static"
        );
    }
    let pki = pki::DevPki::generate()?;
    let auth_listener = TcpListener::bind(config.auth).await?;
    let auth_addr = auth_listener.local_addr()?;
    let issuer = format!("http://{auth_addr}");
    tokio::spawn(auth_server::serve(auth_listener, issuer.clone()));

    let metrics = GatewayMetrics::default();
    let upstream_metrics = UpstreamMetrics::new(&metrics);
    let ratelimit_metrics = RateLimitMetrics::new(&metrics);
    // HTTP/1.1 to the services: every request in flight has a connection
    // of its own, so a client that stalls its upload or never reads its
    // download holds that one connection, never a stream slot or the
    // flow-control window of a connection other clients share.
    let client_tls = MtlsClientConfig::from_pem(
        pki.gateway.chain.as_bytes(),
        pki.gateway.key.as_bytes(),
        pki.ca.as_bytes(),
    )?
    .offer_http2(false);
    let mut keep = Keep::default();
    let mut upstreams = Vec::new();
    let mut services = Vec::new();
    for (offset, kind) in [Kind::Orders, Kind::Payments, Kind::Inventory]
        .into_iter()
        .enumerate()
    {
        let metrics_addr = config
            .service_metrics_port
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port.saturating_add(offset as u16))));
        let addr = services::start(kind, &pki, &issuer, metrics_addr).await?;
        services.push((kind.name(), addr));
        let upstream = Upstream::new(
            kind.name(),
            discovery(&config, kind, addr, &mut keep).await?,
        )
        .tls(tls::client_connector(&client_tls))
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(10))
        .retries(RetryConfig::default())
        .circuit(CircuitConfig::default(), 0.5)
        .metrics(upstream_metrics.clone())
        .build()?;
        upstreams.push((kind, upstream));
    }

    // One limit per consumer (per client IP for tokenless requests), on
    // every route; admins get ten times as much.
    #[allow(unused_mut)]
    let mut limits = RateLimitLayer::builder()
        .key(Consumer::subject().or(ClientIp::peer()))
        .limit(
            Limit::new()
                .per_second(config.per_second)
                .per_hour(config.per_hour),
        )
        .tier(
            "admin",
            Limit::new()
                .per_second(config.per_second.saturating_mul(10))
                .per_hour(config.per_hour.saturating_mul(10)),
        )
        .metrics(ratelimit_metrics.clone());
    #[cfg(feature = "redis")]
    let mut redis = None;
    #[cfg(feature = "redis")]
    if let Some(url) = &config.redis_url {
        use tower_gateway::ratelimit::{FailurePolicy, RedisBackend, RedisConfig};
        let backend = RedisBackend::connect_lazy(url, RedisConfig::default())?;
        redis = Some(backend.clone());
        limits = limits.redis(backend).on_backend_error(FailurePolicy::Local);
    }
    let limits = limits.build()?;
    let routes = upstreams
        .iter()
        .flat_map(|(kind, upstream)| routes_of(*kind, upstream, &limits))
        .fold(
            Routes::builder(),
            tower_gateway::route::RoutesBuilder::route,
        )
        .build()?;

    #[allow(unused_mut)]
    let mut auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(issuer)
                .audience(auth_server::AUDIENCE)
                .oidc_discovery(),
        )
        // The services may read who called from these headers; a client's own
        // values are stripped first, so they cannot be forged.
        .forward_subject(http::HeaderName::from_static("x-user-id"))
        .forward_roles(http::HeaderName::from_static("x-user-roles"))
        .metrics(AuthMetrics::new(&metrics));
    if config.auth_failures_per_minute > 0 {
        // Well above what a NAT full of clients with stale tokens produces,
        // far below what signature-forging needs.
        // Refusals are held for a second: a flood from a spent address
        // slows to one token per connection per second.
        auth = auth.failure_budget(
            FailureBudget::new(config.auth_failures_per_minute, Duration::from_secs(60))
                .tarpit(Duration::from_secs(1)),
        );
    }
    let auth = auth.build()?;
    let auth_for_readiness = auth.clone();
    if !auth.wait_for_keys(Duration::from_secs(5)).await {
        return Err("the auth server published no keys".into());
    }
    let rbac = RbacLayer::default()
        .hierarchy(RoleHierarchy::new().inherit("admin", ["user"]))
        .metrics(RbacMetrics::new(&metrics));
    // Before authentication, per client IP: caps floods of anonymous or
    // invalid-token requests, which the per-consumer limit never sees
    // because authentication refuses them first. Left out when off.
    let per_ip = match config.per_ip_second {
        0 => None,
        n => Some(
            RateLimitLayer::builder()
                .key(ClientIp::peer())
                .scope("ip")
                .limit(Limit::new().per_second(n))
                .metrics(ratelimit_metrics)
                .build()?,
        ),
    };

    let gateway = ServiceBuilder::new()
        // The services run on frameworks that may percent-decode a path
        // twice; `%252e` would be `.` there. No route of ours carries a
        // literal `%`, so strict mode costs nothing legitimate.
        .layer(NormalizePathLayer::new().reject_double_encoding(true))
        // Every request gets an `x-request-id` (a client's is replaced),
        // sent upstream, returned, and in problem+json bodies.
        .layer(RequestIdLayer::new())
        // Matched once; unknown routes are 404 (405, 400) for everyone,
        // as in Kong, and counted as `unmatched`.
        .layer(RouteLayer::new(&routes).metrics(&metrics))
        // A server span per request, named by its route; a client's trace
        // context is linked, not continued (`ClientContext::Restart`).
        .layer(TraceLayer::new())
        // One line per request, refusals included, labelled by route
        // template (target `tower_gateway::access`). Consumers are not
        // logged: the subject is personal data, and only layers after
        // authentication know it.
        .layer(AccessLogLayer::new())
        .layer(MetricsLayer::new(&metrics))
        .option_layer(per_ip)
        .layer(auth)
        .option_layer(
            config
                .metrics_consumers
                .then(|| ConsumerMetricsLayer::new(&metrics)),
        )
        .layer(rbac)
        .layer(RouteRateLimitLayer::new())
        // The access log names the endpoint that answered and the attempts.
        .service(Proxy::new(&routes).report_upstream_calls(true));
    let readiness = Readiness {
        auth: auth_for_readiness,
        upstreams: upstreams
            .iter()
            .map(|(kind, upstream)| (kind.name(), upstream.clone()))
            .collect(),
        #[cfg(feature = "redis")]
        redis,
    };
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(gateway);
    // Metrics and probes on a listener of their own: metrics describe the
    // traffic, which is nobody's business on the public port.
    let admin_app = Router::new()
        .route_service("/metrics", MetricsHandler::new(&metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { readiness.check().await }
            }),
        );
    let admin_listener = TcpListener::bind(config.admin).await?;
    let admin_addr = admin_listener.local_addr()?;
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    tokio::spawn(
        server::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async {
                let _ = admin_stopped.await;
            })
            .into_future(),
    );
    let listener = TcpListener::bind(config.gateway).await?;
    let gateway_addr = listener.local_addr()?;
    // Not `axum::serve`: it has no header read timeout (slowloris), no
    // limit on connections, no edge checks, and inserts no `ClientAddr`.
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = server::serve(listener, app)
        .limits(config.server)
        .with_graceful_shutdown(async {
            // A dropped `Running` is no request to stop.
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
    let server = tokio::spawn(async move {
        let report = serve.await;
        let _ = admin_stop.send(());
        keep.release().await;
        report
    });
    Ok(Running {
        gateway: gateway_addr,
        auth: auth_addr,
        admin: admin_addr,
        services,
        stop,
        server,
    })
}

/// What `/readyz` checks: keys loaded for every issuer, endpoints for every
/// upstream, and Redis reachable (or the local fallback standing in).
#[derive(Clone)]
struct Readiness {
    auth: JwtAuthLayer,
    upstreams: Vec<(&'static str, UpstreamService)>,
    #[cfg(feature = "redis")]
    redis: Option<tower_gateway::ratelimit::RedisBackend>,
}

impl Readiness {
    async fn check(&self) -> (http::StatusCode, axum::Json<serde_json::Value>) {
        let keys = self.auth.wait_for_keys(Duration::ZERO).await;
        let upstreams: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let count = upstream.endpoints().current().endpoints.len();
                ((*name).to_owned(), serde_json::Value::from(count))
            })
            .collect();
        let endpoints = upstreams.values().all(|count| count.as_u64() > Some(0));
        #[cfg(feature = "redis")]
        let redis = match &self.redis {
            None => "not configured",
            Some(redis) if redis.is_available() => "available",
            // The local limiter decides meanwhile (FailurePolicy::Local).
            Some(_) => "unavailable, local fallback active",
        };
        #[cfg(not(feature = "redis"))]
        let redis = "not configured";
        let ready = keys && endpoints;
        let status = if ready {
            http::StatusCode::OK
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            axum::Json(serde_json::json!({
                "ready": ready,
                "issuer_keys_loaded": keys,
                "upstream_endpoints": upstreams,
                "redis": redis,
            })),
        )
    }
}
