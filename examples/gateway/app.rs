//! The reference gateway, assembled from the crate's layers. `main.rs`
//! runs it; `tests/reference_gateway.rs` drives it from outside.

#[path = "auth_server.rs"]
pub mod auth_server;
#[path = "config.rs"]
pub mod config;
#[path = "matrix.rs"]
pub mod matrix;
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
    /// The applied configuration and its reloads (gateways started from a
    /// config file).
    pub live: Option<Arc<Live>>,
    /// The development auth server, when this gateway started one (for
    /// tests).
    #[allow(dead_code)]
    pub auth_server: Option<auth_server::Handle>,
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
    // Built here, not in the spawned task: a state file that cannot be
    // read fails the start. As a message: `main` shows what this returns
    // with `Debug`.
    let auth_server = auth_server::Config::from_env(issuer.clone())
        .and_then(auth_server::AuthServer::new)
        .map_err(|e| format!("the auth server: {e}"))?;
    tokio::spawn(axum::serve(auth_listener, auth_server.router()).into_future());

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
        let addr = services::start(
            kind,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &pki,
            &issuer,
            metrics_addr,
        )
        .await?;
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
        auth: Some(auth_for_readiness),
        upstreams: upstreams
            .iter()
            .map(|(kind, upstream)| (kind.name().to_owned(), upstream.clone()))
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
        live: None,
        auth_server: Some(auth_server.handle()),
    })
}

/// What `/readyz` checks: keys loaded for every issuer, endpoints for every
/// upstream, and Redis reachable (or the local fallback standing in).
#[derive(Clone)]
struct Readiness {
    auth: Option<JwtAuthLayer>,
    upstreams: Vec<(String, UpstreamService)>,
    #[cfg(feature = "redis")]
    redis: Option<tower_gateway::ratelimit::RedisBackend>,
}

impl Readiness {
    async fn check(&self) -> (http::StatusCode, axum::Json<serde_json::Value>) {
        let keys = match &self.auth {
            Some(auth) => auth.wait_for_keys(Duration::ZERO).await,
            None => true,
        };
        let upstreams: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let count = upstream.endpoints().current().endpoints.len();
                (name.clone(), serde_json::Value::from(count))
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

// ---------------------------------------------------------------------------
// The gateway from a config file (`--config gateway.toml`).

use std::{
    collections::HashMap,
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tower::{Service, ServiceExt, util::BoxCloneSyncService};
use tower_gateway::{
    auth::{AuthMode, JwtKey},
    identity::{ClaimPath, RoleSource},
    proxy::Balancer,
    ratelimit::{FailurePolicy, KeyBuilder, KeyError, MissingKey, RequestInfo},
};

use self::config::{
    AuthChoice, BalancerChoice, ConfigError, ConfigErrors, GatewayConfig, KeyKind, KeyMaterial,
    LimitRef, LimitSpec, MissingKeyChoice, RateLimitBackend, UpstreamDiscovery, UpstreamTls, Who,
};

/// The gateway as one boxed service: what a configuration builds, and
/// what a reload swaps.
pub type GatewayService =
    BoxCloneSyncService<http::Request<axum::body::Body>, axum::response::Response, Infallible>;

/// What every configuration's layers share: one metrics registry and the
/// layer handles on it (each registers its families once).
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: GatewayMetrics,
    upstream: UpstreamMetrics,
    ratelimit: RateLimitMetrics,
    auth: AuthMetrics,
    rbac: RbacMetrics,
}

impl Telemetry {
    pub fn new(metrics: GatewayMetrics) -> Self {
        Self {
            upstream: UpstreamMetrics::new(&metrics),
            ratelimit: RateLimitMetrics::new(&metrics),
            auth: AuthMetrics::new(&metrics),
            rbac: RbacMetrics::new(&metrics),
            metrics,
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(GatewayMetrics::default())
    }
}

/// Built components, each under the settings it was built from (their
/// `Debug` text; secrets show as digests). A reload reuses a component
/// whose settings did not change — its limiter state, its JWKS cache and
/// refresh task, its discovery watch, its breakers — and builds the rest.
#[derive(Default)]
pub struct Components {
    auth: HashMap<String, JwtAuthLayer>,
    upstreams: HashMap<String, (UpstreamService, Arc<dyn Any + Send + Sync>)>,
    limits: HashMap<String, RateLimitLayer>,
    #[cfg(feature = "redis")]
    redis: HashMap<String, tower_gateway::ratelimit::RedisBackend>,
    #[cfg(feature = "consul")]
    consul: HashMap<String, tower_gateway::discovery::consul::ConsulClient>,
}

/// What a build needs besides the configuration.
pub struct BuildEnv<'a> {
    pub telemetry: &'a Telemetry,
    /// The demo PKI's client configuration, for `tls = "demo"` upstreams.
    pub demo_tls: Option<&'a MtlsClientConfig>,
    /// Build without side effects (`--check`): no Consul watches, no Redis
    /// Cluster connection, no demo certificates.
    pub dry_run: bool,
}

/// A gateway built from a configuration.
#[derive(Clone)]
pub struct Built {
    pub service: GatewayService,
    pub routes: Arc<Routes>,
    pub rbac: RbacLayer,
    pub auth: Option<JwtAuthLayer>,
    pub upstreams: Vec<(String, UpstreamService)>,
    #[cfg(feature = "redis")]
    pub redis: Option<tower_gateway::ratelimit::RedisBackend>,
}

/// Builds the gateway of `config`, reusing the components of `cache` whose
/// settings did not change; `cache` then holds exactly this build's
/// components. On failure `cache` is left as it was.
pub async fn build(
    config: &GatewayConfig,
    env: &BuildEnv<'_>,
    cache: &mut Components,
) -> Result<Built, ConfigErrors> {
    let mut errors = Vec::new();
    let mut next = Components::default();
    let mut error = |path: String, message: String| errors.push(ConfigError { path, message });

    // Authentication.
    let auth = match &config.auth {
        None => None,
        Some(section) => {
            let key = format!("{section:?}");
            match cache.auth.get(&key).cloned() {
                Some(layer) => {
                    next.auth.insert(key, layer.clone());
                    Some(layer)
                }
                None => match build_auth(section, env.telemetry) {
                    Ok(layer) => {
                        next.auth.insert(key, layer.clone());
                        Some(layer)
                    }
                    Err((path, message)) => {
                        error(path, message);
                        None
                    }
                },
            }
        }
    };

    // Upstreams.
    let mut upstreams: Vec<(String, UpstreamService)> = Vec::new();
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let key = format!("{upstream:?} {:?} {}", config.discovery, env.dry_run);
        if let Some((service, keep)) = cache.upstreams.get(&key) {
            next.upstreams.insert(key, (service.clone(), keep.clone()));
            upstreams.push((upstream.name.clone(), service.clone()));
            continue;
        }
        match build_upstream(config, upstream, env, cache, &mut next).await {
            Ok((service, keep)) => {
                next.upstreams.insert(key, (service.clone(), keep));
                upstreams.push((upstream.name.clone(), service));
            }
            Err((field, message)) => error(join_path(&format!("upstreams[{i}]"), &field), message),
        }
    }

    // Rate limits: the backend, then each limit.
    #[cfg(feature = "redis")]
    let redis = match build_redis(&config.ratelimit.backend, env, cache, &mut next).await {
        Ok(redis) => redis,
        Err(message) => {
            error("ratelimit.backend".into(), message);
            None
        }
    };
    #[cfg(not(feature = "redis"))]
    if !matches!(config.ratelimit.backend, RateLimitBackend::Local) {
        error(
            "ratelimit.backend".into(),
            "this build lacks the `redis` feature".into(),
        );
    }
    let backend_key = format!(
        "{:?} {:?} {}",
        config.ratelimit.backend,
        config.ratelimit.on_backend_error,
        config.ratelimit.fallback_share
    );
    let mut limit = |cx_errors: &mut dyn FnMut(String, String),
                     path: String,
                     spec: &LimitSpec|
     -> Option<RateLimitLayer> {
        let key = format!("{spec:?} {backend_key}");
        if let Some(layer) = cache.limits.get(&key).or_else(|| next.limits.get(&key)) {
            let layer = layer.clone();
            next.limits.insert(key, layer.clone());
            return Some(layer);
        }
        let built = build_limit(
            spec,
            config,
            env.telemetry,
            #[cfg(feature = "redis")]
            redis.as_ref(),
        );
        match built {
            Ok(layer) => {
                next.limits.insert(key, layer.clone());
                Some(layer)
            }
            Err(message) => {
                cx_errors(path, message);
                None
            }
        }
    };
    let mut named = HashMap::new();
    for (name, spec) in &config.ratelimit.limits {
        if let Some(layer) = limit(&mut error, format!("ratelimit.limits.{name}"), spec) {
            named.insert(name.clone(), layer);
        }
    }
    let per_ip = match config.ratelimit.per_ip_second {
        0 => None,
        n => {
            let spec = LimitSpec {
                key: vec![KeyKind::Ip],
                windows: config::Windows {
                    per_second: Some(n),
                    ..config::Windows::default()
                },
                tiers: Vec::new(),
                scope: "ip".into(),
                on_missing_key: MissingKeyChoice::Reject,
            };
            limit(&mut error, "ratelimit.per_ip_second".into(), &spec)
        }
    };

    // Routes, with every layer's settings.
    let mut table = Routes::builder();
    for (i, route) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some((_, upstream)) = upstreams.iter().find(|(name, _)| *name == route.upstream) else {
            // Reported by validation, or by the upstream's own build.
            continue;
        };
        let mut built =
            config::bare_route(route)
                .upstream(upstream.clone())
                .auth(match route.auth {
                    AuthChoice::Required => AuthMode::Required,
                    AuthChoice::Optional => AuthMode::Optional,
                    AuthChoice::None => AuthMode::None,
                });
        for rule in &route.rules {
            built = built.allow(
                rule.methods.iter().cloned(),
                match &rule.who {
                    Who::Public => Requirement::Public,
                    Who::Authenticated => Requirement::Authenticated,
                    Who::AnyOf(roles) => Requirement::AnyOf(roles.clone()),
                    Who::AllOf(roles) => Requirement::AllOf(roles.clone()),
                },
            );
        }
        for (j, reference) in route.limits.iter().enumerate() {
            let layer = match reference {
                LimitRef::Named(name) => named.get(name).cloned(),
                LimitRef::Inline(spec) => limit(&mut error, format!("{path}.limits[{j}]"), spec),
            };
            if let Some(layer) = layer {
                built = built.rate_limit(&layer);
            }
        }
        if let Some(timeout) = route.timeout {
            built = built.timeout(timeout);
        }
        if let Some(retries) = route.retries {
            built = built.retries(RetryConfig::default().attempts(retries));
        }
        if route.strip_prefix {
            built = built.strip_prefix();
        }
        table = table.route(built);
    }
    let routes = match table.build() {
        Ok(routes) => Some(routes),
        Err(e) => {
            error("routes".into(), e.to_string());
            None
        }
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let Some(routes) = routes else {
        return Err(ConfigErrors::one("routes", "no route table"));
    };

    let hierarchy = config
        .rbac
        .hierarchy
        .iter()
        .fold(RoleHierarchy::new(), |h, (role, implied)| {
            h.inherit(role.clone(), implied.iter().cloned())
        });
    let rbac = RbacLayer::default()
        .hierarchy(hierarchy)
        .metrics(env.telemetry.rbac.clone());
    let metrics = &env.telemetry.metrics;
    let stack = ServiceBuilder::new()
        .layer(NormalizePathLayer::new().reject_double_encoding(true))
        .layer(RequestIdLayer::new())
        .layer(RouteLayer::new(&routes).metrics(metrics))
        .layer(TraceLayer::new().sample_ratio(config.tracing.sample_ratio))
        .layer(AccessLogLayer::new())
        .layer(MetricsLayer::new(metrics))
        .option_layer(per_ip)
        .option_layer(auth.clone())
        .option_layer(
            config
                .metrics
                .consumers
                .then(|| ConsumerMetricsLayer::new(metrics)),
        )
        .layer(rbac.clone())
        .layer(RouteRateLimitLayer::new())
        .service(Proxy::new(&routes).report_upstream_calls(true));
    let stack = ServiceExt::<http::Request<axum::body::Body>>::map_response(
        stack,
        axum::response::IntoResponse::into_response,
    );
    *cache = next;
    Ok(Built {
        service: BoxCloneSyncService::new(stack),
        routes,
        rbac,
        auth,
        upstreams,
        #[cfg(feature = "redis")]
        redis,
    })
}

fn join_path(parent: &str, field: &str) -> String {
    if field.is_empty() {
        parent.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// The JWT layer of the `[auth]` section; errors name the field.
fn build_auth(
    section: &config::AuthConfig,
    telemetry: &Telemetry,
) -> Result<JwtAuthLayer, (String, String)> {
    let mut builder = JwtAuthLayer::builder()
        .leeway(section.leeway)
        .jwks_options(
            tower_gateway::auth::JwksOptions::default()
                .refresh_interval(section.jwks_refresh_interval)
                .min_refetch_interval(section.jwks_min_refetch_interval),
        )
        .roles(RoleSource::new(
            section.role_claims.iter().map(|c| ClaimPath::dotted(c)),
        ))
        .metrics(telemetry.auth.clone());
    if let Some(max) = section.max_lifetime {
        builder = builder.max_lifetime(max);
    }
    let header = |name: &str, field: &str| {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| (format!("auth.{field}"), e.to_string()))
    };
    if let Some(name) = &section.forward_subject {
        builder = builder.forward_subject(header(name, "forward_subject")?);
    }
    if let Some(name) = &section.forward_roles {
        builder = builder.forward_roles(header(name, "forward_roles")?);
    }
    if section.failures_per_minute > 0 {
        builder = builder.failure_budget(
            FailureBudget::new(section.failures_per_minute, Duration::from_secs(60))
                .tarpit(Duration::from_secs(1)),
        );
    }
    for (i, issuer_config) in section.issuers.iter().enumerate() {
        let mut issuer = match &issuer_config.issuer {
            Some(iss) => Issuer::new(iss.clone()),
            None => Issuer::any(),
        };
        for audience in &issuer_config.audiences {
            issuer = issuer.audience(audience.clone());
        }
        if issuer_config.oidc_discovery {
            issuer = issuer.oidc_discovery();
        }
        if let Some(url) = &issuer_config.jwks_url {
            issuer = issuer.jwks_url(url.clone());
        }
        for (j, key) in issuer_config.keys.iter().enumerate() {
            let at = |field: &str| format!("auth.issuers[{i}].keys[{j}].{field}");
            let read = |path: &Path| {
                std::fs::read(path).map_err(|e| {
                    (
                        at("pem_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })
            };
            let pem_error = |e: tower_gateway::auth::KeyError| (at("pem_file"), e.to_string());
            let mut jwt_key = match &key.material {
                KeyMaterial::Hmac(secret) => JwtKey::hmac(secret.expose().as_bytes()),
                KeyMaterial::Rsa(path) => JwtKey::rsa_pem(read(path)?).map_err(pem_error)?,
                KeyMaterial::Ec(path) => JwtKey::ec_pem(read(path)?).map_err(pem_error)?,
                KeyMaterial::Ed(path) => JwtKey::ed_pem(read(path)?).map_err(pem_error)?,
            };
            if let Some(kid) = &key.kid {
                jwt_key = jwt_key.kid(kid.clone());
            }
            issuer = issuer.key(jwt_key);
        }
        builder = builder.issuer(issuer);
    }
    builder
        .build()
        .map_err(|e| ("auth".to_owned(), e.to_string()))
}

/// One upstream; errors name the field under `upstreams[i]`.
async fn build_upstream(
    config: &GatewayConfig,
    upstream: &config::UpstreamConfig,
    env: &BuildEnv<'_>,
    #[allow(unused_variables)] cache: &Components,
    #[allow(unused_variables)] next: &mut Components,
) -> Result<(UpstreamService, Arc<dyn Any + Send + Sync>), (String, String)> {
    let name = upstream.name.as_str();
    let (watch, keep): (EndpointWatch, Arc<dyn Any + Send + Sync>) = match &upstream.discovery {
        UpstreamDiscovery::Static(instances) => {
            let source =
                StaticDiscovery::new(instances.iter().enumerate().map(|(i, (host, port))| {
                    Endpoint::new(format!("{name}-{}", i + 1), host.clone(), *port)
                }));
            (source.watch(), Arc::new(source))
        }
        UpstreamDiscovery::Consul { .. } if env.dry_run => {
            let source = StaticDiscovery::new(Vec::<Endpoint>::new());
            (source.watch(), Arc::new(source))
        }
        #[cfg(feature = "consul")]
        UpstreamDiscovery::Consul { service, tags } => {
            let Some(section) = &config.discovery.consul else {
                return Err(("consul".into(), "needs a [discovery.consul] section".into()));
            };
            let key = format!("{section:?}");
            let client = match cache.consul.get(&key).or_else(|| next.consul.get(&key)) {
                Some(client) => client.clone(),
                None => build_consul(section)
                    .map_err(|e| ("consul".to_owned(), format!("discovery.consul: {e}")))?,
            };
            next.consul.insert(key, client.clone());
            let watch = client
                .watch(service.clone())
                .tags(tags.iter().cloned())
                // `discovery_staleness_seconds{service}`: how old the
                // instances served are while Consul cannot be reached.
                .metrics(tower_gateway::discovery::DiscoveryMetrics::new(
                    &env.telemetry.metrics,
                ))
                .spawn()
                .map_err(|e| ("consul".to_owned(), e.to_string()))?;
            let view = watch.watch();
            // Until Consul's first answer (at most 5 s), for the first
            // requests to find instances. (Not `wait_for_sync`: the handle
            // is not `Sync`, and a reload runs on a task of its own.)
            let mut synced = view.subscribe();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                synced.wait_for(|snapshot| !snapshot.stale),
            )
            .await;
            // The handle is kept, not shared: a mutex makes it `Sync`.
            (view, Arc::new(Mutex::new(watch)))
        }
        #[cfg(not(feature = "consul"))]
        UpstreamDiscovery::Consul { .. } => {
            let _ = config;
            return Err((
                "consul".into(),
                "this build lacks the `consul` feature".into(),
            ));
        }
    };
    let mut builder = Upstream::new(name.to_owned(), watch)
        .connect_timeout(upstream.connect_timeout)
        .request_timeout(upstream.request_timeout)
        .retries(RetryConfig::default().attempts(upstream.retries))
        .balancer(match upstream.balancer {
            BalancerChoice::LeastRequest => Balancer::LeastRequest,
            BalancerChoice::RoundRobin => Balancer::RoundRobin,
            BalancerChoice::PeakEwma => Balancer::peak_ewma().into(),
        })
        .metrics(env.telemetry.upstream.clone());
    match &upstream.tls {
        None => {}
        Some(UpstreamTls::Demo) => {
            if let Some(tls) = env.demo_tls {
                builder = builder.tls(tls::client_connector(tls));
            } else if !env.dry_run {
                return Err((
                    "tls".into(),
                    "no demo certificates: add a [demo] section".into(),
                ));
            }
        }
        Some(UpstreamTls::Files {
            ca_file,
            cert_file,
            key_file,
            server_name,
            http2,
        }) => {
            let read = |field: &str, path: &Path| {
                std::fs::read(path).map_err(|e| {
                    (
                        format!("tls.{field}"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })
            };
            let chain = read("cert_file", cert_file)?;
            let key = read("key_file", key_file)?;
            let ca = read("ca_file", ca_file)?;
            let mut client = MtlsClientConfig::from_pem(&chain, &key, &ca)
                .map_err(|e| ("tls".to_owned(), e.to_string()))?
                .offer_http2(*http2);
            if let Some(server_name) = server_name {
                client = client
                    .server_name(server_name)
                    .map_err(|e| ("tls.server_name".to_owned(), e.to_string()))?;
            }
            builder = builder.tls(tls::client_connector(&client));
        }
    }
    if let Some(circuit) = &upstream.circuit {
        let window = match circuit.window_calls {
            Some(calls) => tower_gateway::circuit::Window::Count(calls),
            None => tower_gateway::circuit::Window::Time {
                length: circuit.window,
                buckets: 10,
            },
        };
        let breaker = CircuitConfig::default()
            .window(window)
            .failure_rate(circuit.failure_rate)
            .minimum_calls(circuit.minimum_calls)
            .consecutive_failures(circuit.consecutive_failures)
            .open_duration(circuit.open_duration, circuit.max_open_duration)
            .half_open_probes(circuit.half_open_probes);
        builder = builder.circuit(breaker, circuit.max_ejected_fraction);
    }
    let service = builder
        .build()
        .map_err(|e| (String::new(), e.to_string()))?;
    Ok((service, keep))
}

#[cfg(feature = "consul")]
fn build_consul(
    section: &config::ConsulConfig,
) -> Result<tower_gateway::discovery::consul::ConsulClient, BoxError> {
    use tower_gateway::{client::HttpClientConfig, discovery::consul::ConsulClientBuilder};
    let mut builder = ConsulClientBuilder::new(section.address.clone());
    if let Some(token) = &section.token {
        builder = builder.token(token.expose());
    }
    if let Some(dc) = &section.datacenter {
        builder = builder.datacenter(dc.clone());
    }
    if let Some(tls) = &section.tls {
        let mut http = HttpClientConfig::default();
        if let Some(ca) = &tls.ca_file {
            http = http.add_root_file(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            http = http.client_certificate_files(cert.clone(), key.clone());
        }
        if let Some(name) = &tls.server_name {
            http = http.tls_server_name(name.clone());
        }
        builder = builder.http(http);
    }
    Ok(builder.build()?)
}

#[cfg(feature = "redis")]
async fn build_redis(
    backend: &RateLimitBackend,
    env: &BuildEnv<'_>,
    cache: &Components,
    next: &mut Components,
) -> Result<Option<tower_gateway::ratelimit::RedisBackend>, String> {
    use tower_gateway::ratelimit::{RedisBackend, RedisConfig};
    let key = format!("{backend:?}");
    if let Some(redis) = cache.redis.get(&key) {
        next.redis.insert(key, redis.clone());
        return Ok(Some(redis.clone()));
    }
    let redis = match backend {
        RateLimitBackend::Local => return Ok(None),
        RateLimitBackend::Redis {
            url,
            timeout,
            prefix,
        } => RedisBackend::connect_lazy(
            url.expose(),
            RedisConfig::default()
                .timeout(*timeout)
                .prefix(prefix.clone()),
        )
        .map_err(|e| e.to_string())?,
        // A Cluster connection is made at once: not in a dry run.
        RateLimitBackend::Cluster { .. } if env.dry_run => return Ok(None),
        RateLimitBackend::Cluster {
            nodes,
            timeout,
            prefix,
        } => RedisBackend::cluster(
            nodes.iter().map(config::Secret::expose),
            RedisConfig::default()
                .timeout(*timeout)
                .prefix(prefix.clone()),
        )
        .await
        .map_err(|e| e.to_string())?,
    };
    next.redis.insert(key, redis.clone());
    Ok(Some(redis))
}

/// A key extractor of the config's key kinds: the first that finds a key.
struct ConfiguredKey(Box<dyn KeyExtractor>);

impl KeyExtractor for ConfiguredKey {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        self.0.extract(request, key)
    }
}

fn key_extractor(kinds: &[KeyKind]) -> Result<ConfiguredKey, String> {
    let one = |kind: &KeyKind| -> Result<Box<dyn KeyExtractor>, String> {
        Ok(match kind {
            KeyKind::Consumer => Box::new(Consumer::subject()),
            KeyKind::Claim(path) => Box::new(Consumer::claim(path)),
            KeyKind::Ip => Box::new(ClientIp::peer()),
            KeyKind::Route => Box::new(tower_gateway::ratelimit::Route),
            KeyKind::Header(name) => Box::new(tower_gateway::ratelimit::Header::new(
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
            )),
        })
    };
    let mut kinds = kinds.iter().rev();
    let Some(last) = kinds.next() else {
        return Err("no key".into());
    };
    let mut key = ConfiguredKey(one(last)?);
    for kind in kinds {
        key = ConfiguredKey(Box::new(ConfiguredKey(one(kind)?).or(key)));
    }
    Ok(key)
}

fn build_limit(
    spec: &LimitSpec,
    config: &GatewayConfig,
    telemetry: &Telemetry,
    #[cfg(feature = "redis")] redis: Option<&tower_gateway::ratelimit::RedisBackend>,
) -> Result<RateLimitLayer, String> {
    let mut builder = RateLimitLayer::builder()
        .key(key_extractor(&spec.key)?)
        .scope(spec.scope.clone())
        .on_missing_key(match spec.on_missing_key {
            MissingKeyChoice::Reject => MissingKey::Reject,
            MissingKeyChoice::Allow => MissingKey::Allow,
        })
        .metrics(telemetry.ratelimit.clone());
    if !spec.windows.is_empty() {
        builder = builder.limit(config::limit_of(&spec.windows));
    }
    for (role, windows) in &spec.tiers {
        builder = builder.tier(role.clone(), config::limit_of(windows));
    }
    #[cfg(feature = "redis")]
    if let Some(redis) = redis {
        builder = builder
            .redis(redis.clone())
            .on_backend_error(match config.ratelimit.on_backend_error {
                config::FailureChoice::Local => FailurePolicy::Local,
                config::FailureChoice::Allow => FailurePolicy::Allow,
                config::FailureChoice::Deny => FailurePolicy::Deny,
            })
            .fallback_share(config.ratelimit.fallback_share);
    }
    #[cfg(not(feature = "redis"))]
    let _ = (config, FailurePolicy::Local);
    builder.build().map_err(|e| e.to_string())
}

/// One applied configuration.
pub struct Generation {
    pub built: Built,
    pub config: GatewayConfig,
    pub version: String,
}

/// What `/config` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// The SHA-256 of the applied file.
    pub version: String,
    /// When it was applied (seconds since the Unix epoch).
    pub applied_at: u64,
    /// The last refused file, if it came after the applied one.
    pub last_error: Option<ReloadError>,
    /// Sections that changed but apply only at the next start.
    pub restart_required: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadError {
    pub version: Option<String>,
    pub at: u64,
    pub errors: Vec<String>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type ReloadCounter = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::counter::Counter,
>;

/// The running configuration and what replaces it.
pub struct Live {
    current: arc_swap::ArcSwap<Generation>,
    status: Mutex<ReloadStatus>,
    reloads: ReloadCounter,
    components: tokio::sync::Mutex<Components>,
    telemetry: Telemetry,
    demo_tls: Option<MtlsClientConfig>,
    path: Option<PathBuf>,
}

impl Live {
    /// The configuration serving new requests.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads the file again and applies it if it is valid and builds; a
    /// bad file keeps the current configuration. Returns whether a new
    /// configuration was applied (an unchanged file is not rebuilt).
    pub async fn reload(&self) -> Result<bool, ConfigErrors> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let result: Result<Option<(config::Loaded, Built)>, ConfigErrors> = async {
            let loaded = config::load_file(path, &config::ProcessEnv)?;
            if loaded.version == self.current.load().version {
                return Ok(None);
            }
            let mut components = self.components.lock().await;
            let env = BuildEnv {
                telemetry: &self.telemetry,
                demo_tls: self.demo_tls.as_ref(),
                dry_run: false,
            };
            let built = build(&loaded.config, &env, &mut components).await?;
            Ok(Some((loaded, built)))
        }
        .await;
        let label = |result: &str| vec![("result".to_owned(), result.to_owned())];
        match result {
            Ok(None) => Ok(false),
            Ok(Some((loaded, built))) => {
                let restart = restart_required(&self.current.load().config, &loaded.config);
                for section in &restart {
                    tracing::warn!(section, "changed; applies at the next start");
                }
                tracing::info!(version = %loaded.version, "configuration reloaded");
                let version = loaded.version.clone();
                // In-flight requests hold a clone of the old service and
                // finish on it; new requests load this one.
                self.current.store(Arc::new(Generation {
                    built,
                    config: loaded.config,
                    version: loaded.version,
                }));
                if let Ok(mut status) = self.status.lock() {
                    *status = ReloadStatus {
                        version,
                        applied_at: unix_now(),
                        last_error: None,
                        restart_required: restart,
                    };
                }
                self.reloads.get_or_create(&label("success")).inc();
                Ok(true)
            }
            Err(errors) => {
                tracing::error!("configuration refused, the previous one stays in force\n{errors}");
                let version = std::fs::read(path).ok().map(|b| config::digest(&b));
                if let Ok(mut status) = self.status.lock() {
                    status.last_error = Some(ReloadError {
                        version,
                        at: unix_now(),
                        errors: errors.0.iter().map(ToString::to_string).collect(),
                    });
                }
                self.reloads.get_or_create(&label("failure")).inc();
                Err(errors)
            }
        }
    }
}

/// Sections a reload cannot apply: the listeners, the server limits and
/// the demo environment are set up once, at start.
fn restart_required(old: &GatewayConfig, new: &GatewayConfig) -> Vec<String> {
    let mut changed = Vec::new();
    if old.listeners != new.listeners {
        changed.push("listeners".to_owned());
    }
    if old.server != new.server {
        changed.push("server".to_owned());
    }
    if old.demo != new.demo {
        changed.push("demo".to_owned());
    }
    changed
}

/// The public side's service: each request runs on the configuration
/// current when it arrived.
#[derive(Clone)]
struct Swapping(Arc<Live>);

impl Service<http::Request<axum::body::Body>> for Swapping {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = tower::util::Oneshot<GatewayService, http::Request<axum::body::Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the current service's, polled by `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        self.0.current.load().built.service.clone().oneshot(request)
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn leak_roles(roles: &[String]) -> &'static [&'static str] {
    Box::leak(
        roles
            .iter()
            .map(|r| leak(r))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// Starts the gateway of a config file (and the demo environment it
/// describes). With `path`, the file is watched: SIGHUP or a change of
/// its content reloads it.
pub async fn start_from_config(
    loaded: config::Loaded,
    path: Option<PathBuf>,
) -> Result<Running, BoxError> {
    tower_gateway::auth::install_crypto_backend();
    let config = loaded.config.clone();
    let mut services = Vec::new();
    let mut auth_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut demo_tls = None;
    let mut auth_handle = None;
    if let Some(demo) = &config.demo {
        let pki = pki::DevPki::generate()?;
        let mut issuer = String::new();
        if let Some(settings) = &demo.auth_server {
            let listener = TcpListener::bind(settings.listen).await?;
            auth_addr = listener.local_addr()?;
            issuer = format!("http://{auth_addr}");
            let mut server = auth_server::Config::new(issuer.clone());
            if let Some(key) = &settings.key_file {
                server.key = auth_server::KeySource::File(key.clone());
            }
            if let (Some(path), Some(key)) = (&settings.state_file, &settings.state_key) {
                server.key = auth_server::KeySource::Encrypted {
                    path: path.clone(),
                    key: auth_server::StateKey::parse(key.expose())?,
                };
            }
            server.key_rotation = settings.key_rotation;
            server.access_ttl = settings.access_ttl.as_secs();
            server.refresh_ttl = settings.refresh_ttl.as_secs();
            // The auth server lives as long as the process, and reloads
            // do not touch it: its users and clients are leaked once.
            if let Some(users) = &settings.users {
                server.users = Box::leak(
                    users
                        .iter()
                        .map(|u| auth_server::User {
                            name: leak(&u.name),
                            password: leak(u.password.expose()),
                            roles: leak_roles(&u.roles),
                        })
                        .collect::<Vec<_>>()
                        .into_boxed_slice(),
                );
            }
            if let Some(clients) = &settings.clients {
                server.clients = Box::leak(
                    clients
                        .iter()
                        .map(|c| auth_server::Client {
                            id: leak(&c.id),
                            secret: c.secret.as_ref().map(|s| leak(s.expose())),
                            grants: leak_roles(&c.grants),
                            roles: leak_roles(&c.roles),
                        })
                        .collect::<Vec<_>>()
                        .into_boxed_slice(),
                );
            }
            let server = auth_server::AuthServer::new(server)?;
            auth_handle = Some(server.handle());
            tokio::spawn(axum::serve(listener, server.router()).into_future());
        }
        for (offset, (name, listen)) in demo.services.iter().enumerate() {
            let kind = match name.as_str() {
                "orders" => Kind::Orders,
                "payments" => Kind::Payments,
                _ => Kind::Inventory,
            };
            let metrics_addr = demo
                .service_metrics_port
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port.saturating_add(offset as u16))));
            let addr = services::start(kind, *listen, &pki, &issuer, metrics_addr).await?;
            services.push((kind.name(), addr));
        }
        demo_tls = Some(
            MtlsClientConfig::from_pem(
                pki.gateway.chain.as_bytes(),
                pki.gateway.key.as_bytes(),
                pki.ca.as_bytes(),
            )?
            .offer_http2(false),
        );
    }

    let telemetry = Telemetry::default();
    let reloads = ReloadCounter::default();
    telemetry.metrics.with_registry(|registry| {
        registry.register(
            "config_reload",
            "Configuration reloads, by result",
            reloads.clone(),
        );
    });
    // Both series exist from the start, at zero.
    for result in ["success", "failure"] {
        let _ = reloads.get_or_create(&vec![("result".to_owned(), result.to_owned())]);
    }
    let mut components = Components::default();
    let built = build(
        &config,
        &BuildEnv {
            telemetry: &telemetry,
            demo_tls: demo_tls.as_ref(),
            dry_run: false,
        },
        &mut components,
    )
    .await?;
    if let Some(auth) = &built.auth
        && !auth.wait_for_keys(Duration::from_secs(5)).await
    {
        tracing::warn!(
            "not every issuer's keys could be loaded yet; tokens of those issuers are refused until they are"
        );
    }
    let live = Arc::new(Live {
        current: arc_swap::ArcSwap::from_pointee(Generation {
            built,
            config: config.clone(),
            version: loaded.version.clone(),
        }),
        status: Mutex::new(ReloadStatus {
            version: loaded.version,
            applied_at: unix_now(),
            last_error: None,
            restart_required: Vec::new(),
        }),
        reloads,
        components: tokio::sync::Mutex::new(components),
        telemetry: telemetry.clone(),
        demo_tls,
        path,
    });

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(Swapping(live.clone()));
    let ready = live.clone();
    let status = live.clone();
    let admin_app = Router::new()
        .route_service("/metrics", MetricsHandler::new(&telemetry.metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let current = ready.current();
                async move {
                    let readiness = Readiness {
                        auth: current.built.auth.clone(),
                        upstreams: current.built.upstreams.clone(),
                        #[cfg(feature = "redis")]
                        redis: current.built.redis.clone(),
                    };
                    readiness.check().await
                }
            }),
        )
        .route(
            "/config",
            get(move || {
                let status = status.status();
                async move { axum::Json(status) }
            }),
        );
    let admin_listener = TcpListener::bind(config.listeners.admin).await?;
    let admin_addr = admin_listener.local_addr()?;
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    tokio::spawn(
        server::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async {
                let _ = admin_stopped.await;
            })
            .into_future(),
    );

    let listener = TcpListener::bind(config.listeners.public).await?;
    let gateway_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut serve = server::serve(listener, app).limits(config.server);
    let mut keep = Keep::default();
    if let Some(tls) = &config.listeners.tls {
        // With a client CA, mutual TLS (or optional client certificates);
        // without, plain HTTPS.
        let (chain, key) = (&tls.cert_file, &tls.key_file);
        let acceptor = match &tls.client_ca_file {
            Some(ca) => {
                let certs = tls::ReloadingCertificates::from_files(tls::CertificateFiles::new(
                    chain, key, ca,
                ))?;
                if let Some(every) = tls.reload_interval {
                    keep.alive.push(Box::new(certs.watch(every)));
                }
                if tls.client_certificates_required {
                    tls::ServerTls::from(tls::MtlsAcceptor::new(&certs))
                } else {
                    tls::TlsAcceptor::with_optional_client_certificates(&certs).into()
                }
            }
            None => {
                let certificate = tls::ReloadingServerCertificate::from_files(chain, key)?;
                if let Some(every) = tls.reload_interval {
                    keep.alive.push(Box::new(certificate.watch(every)));
                }
                tls::TlsAcceptor::new(&certificate).into()
            }
        };
        serve = serve.tls(acceptor);
    }
    let serve = serve.with_graceful_shutdown(async {
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let watcher = live
        .path
        .is_some()
        .then(|| tokio::spawn(watch_file(live.clone())));
    let server = tokio::spawn(async move {
        let report = serve.await;
        let _ = admin_stop.send(());
        if let Some(watcher) = watcher {
            watcher.abort();
        }
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
        live: Some(live),
        auth_server: auth_handle,
    })
}

/// Reloads the file on SIGHUP, and when its content changes (its hash is
/// polled every second: no file-notification dependency, and editors that
/// replace the file instead of writing it are seen too).
async fn watch_file(live: Arc<Live>) {
    let Some(path) = live.path.clone() else {
        return;
    };
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: reloads on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = live.current().version.clone();
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            tick.tick().await;
            false
        };
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        let digest = config::digest(&bytes);
        // A refused file is reported once, not every second.
        if digest == seen && !forced {
            continue;
        }
        seen = digest;
        let _ = live.reload().await;
    }
}

/// `--check`: validates, builds without side effects, and returns the
/// authorization matrix.
pub async fn check(config: &GatewayConfig) -> Result<matrix::Matrix, ConfigErrors> {
    tower_gateway::auth::install_crypto_backend();
    let telemetry = Telemetry::default();
    let built = build(
        config,
        &BuildEnv {
            telemetry: &telemetry,
            demo_tls: None,
            dry_run: true,
        },
        &mut Components::default(),
    )
    .await?;
    Ok(matrix::compute(config, &built))
}
