//! Load benchmark, targets (c) to (f): the crate's proxy, alone and under
//! the full middleware stack, built only from the public API the way a user
//! would assemble it (compare `examples/gateway/app.rs`).
//!
//! ```text
//! load_gateway proxy      <listen-addr> <upstream-addr>               # (c)
//! load_gateway full       <listen-addr> <upstream-addr>               # (d), (e)
//! load_gateway full-redis <listen-addr> <upstream-addr> <redis-url>   # (f)
//! load_gateway full-traced    <listen-addr> <upstream-addr>           # (d_ts)
//! load_gateway full-unsampled <listen-addr> <upstream-addr>           # (d_tu)
//! load_gateway tokens     <count> <file>    # HS256 tokens, one per line
//! ```
//!
//! - `proxy`: `RouteLayer` + `Proxy` + one `Upstream` with its defaults
//!   (breaker, retries, timeouts).
//! - `full`: `RouteLayer`, `MetricsLayer`, `JwtAuthLayer` (HS256, the
//!   default verification cache), `RbacLayer`, `RateLimitLayer` (local, per
//!   consumer, a limit no load reaches), then the same proxy.
//! - `full-redis`: `full` with the limiter on Redis (`RedisRateLimitLayer`);
//!   a Redis failure answers 503 so a broken setup cannot pass for a fast
//!   one.
//! - `full-traced`, `full-unsampled` (feature `otel`): `full` with tracing
//!   on — a tracing subscriber with the tracing-opentelemetry layer, a
//!   server span per request, the trace ID read for the latency exemplar —
//!   every request sampled (always-on sampler, spans batched to an exporter
//!   that drops them: nothing leaves the machine), or none (always-off
//!   sampler). The access log stays off.
//!
//! Every program serves HTTP/1.1 and HTTP/2 with the crate's server
//! (`server::serve`: the edge layer, the peer's `ClientAddr` in each
//! request, default limits). It prints `listening <addr>` once bound.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{Request, Response};
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder};
use tower_gateway::{
    auth::{AuthMetrics, FailureBudget, Issuer, JwtAuthLayer, JwtKey},
    discovery::{Endpoint, StaticDiscovery},
    metrics::{GatewayMetrics, MetricsLayer},
    proxy::{Proxy, Upstream, UpstreamMetrics},
    ratelimit::{ClientIp, Consumer, KeyExtractor, Limit, RateLimitLayer, RateLimitMetrics},
    rbac::{Policy, RbacLayer, RbacMetrics, Rule},
    route::{Route, RouteLayer, Routes},
    trace::{RequestIdLayer, TraceLayer},
};

/// The HS256 secret, issuer and audience the tokens are minted with.
const SECRET: &[u8] = b"load-benchmark-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.load.test";
const AUDIENCE: &str = "load-upstream";

const USAGE: &str = "usage: load_gateway proxy|full|full-traced|full-unsampled <listen> <upstream> \
                     | full-redis <listen> <upstream> <redis-url> | tokens <count> <file>";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tokens") => {
            let count: usize = args.get(1).ok_or(USAGE)?.parse()?;
            tokens(count, args.get(2).ok_or(USAGE)?)
        }
        Some(
            mode @ ("proxy" | "proxy-bare-server" | "full" | "full-redis" | "full-traced"
            | "full-unsampled"),
        ) => {
            let listen: SocketAddr = args.get(1).ok_or(USAGE)?.parse()?;
            let upstream: SocketAddr = args.get(2).ok_or(USAGE)?.parse()?;
            let redis = if mode == "full-redis" {
                Some(args.get(3).ok_or(USAGE)?.clone())
            } else {
                None
            };
            let traced = match mode {
                "full-traced" => Some(true),
                "full-unsampled" => Some(false),
                _ => None,
            };
            let _tracing = traced.map(tracing_on).transpose()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(mode, listen, upstream, redis))
        }
        _ => Err(USAGE.into()),
    }
}

/// Writes `count` distinct valid tokens (subjects `user-0`, `user-1`, ...,
/// role `user`, valid for a day), one per line.
fn tokens(count: usize, file: &str) -> Result<(), BoxError> {
    use std::io::Write;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for i in 0..count {
        let claims = serde_json::json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": format!("user-{i}"),
            "roles": ["user"],
            "iat": now,
            "exp": now + 86_400,
        });
        writeln!(out, "{}", jsonwebtoken::encode(&header, &claims, &key)?)?;
    }
    out.flush()?;
    Ok(())
}

async fn run(
    mode: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    redis: Option<String>,
) -> Result<(), BoxError> {
    let discovery = StaticDiscovery::new([Endpoint::new(
        "upstream-1",
        upstream.ip().to_string(),
        upstream.port(),
    )]);
    let metrics = GatewayMetrics::default();
    let mut upstream = Upstream::new("upstream", discovery.watch());
    if !mode.starts_with("proxy") {
        upstream = upstream.metrics(UpstreamMetrics::new(&metrics));
    }
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream.build()?))
        .build()?;
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    if mode == "proxy-bare-server" {
        let svc = ServiceBuilder::new()
            .layer(RouteLayer::new(&table))
            .service(Proxy::new(&table));
        serve_bare(listener, svc).await
    } else if mode == "proxy" {
        let svc = ServiceBuilder::new()
            .layer(RouteLayer::new(&table))
            .service(Proxy::new(&table));
        serve(listener, svc).await
    } else {
        // An ES256 key beside the HS256 secret, as forged tokens target
        // (benches/load/forger.rs): each costs an ECDSA verification unless
        // the failure budget or the negative cache refuses it first. The
        // budget is the reference gateway's: 30 failures a minute per
        // address, refusals held for a second.
        let es_key = {
            use p256::pkcs8::{EncodePublicKey, LineEnding};
            let secret = p256::SecretKey::random(&mut rand::thread_rng());
            secret.public_key().to_public_key_pem(LineEnding::LF)?
        };
        let auth = JwtAuthLayer::builder()
            .issuer(
                Issuer::new(ISSUER)
                    .audience(AUDIENCE)
                    .key(JwtKey::hmac(SECRET))
                    .key(JwtKey::ec_pem(es_key)?.kid("es-1")),
            )
            .failure_budget(
                FailureBudget::new(30, Duration::from_secs(60)).tarpit(Duration::from_secs(1)),
            )
            .metrics(AuthMetrics::new(&metrics))
            .build()?;
        let policy = Policy::builder()
            .rule(Rule::new("/").any_of(["user"]))
            .deny_unmatched(true)
            .build()?;
        let rbac = RbacLayer::new(policy).metrics(RbacMetrics::new(&metrics));
        let limits = limits(redis.as_deref(), RateLimitMetrics::new(&metrics)).await?;
        let traced = matches!(mode, "full-traced" | "full-unsampled");
        // Sampled in the gateway (`TraceLayer::sample_ratio`), as its docs
        // advise: an unsampled request opens no span at all.
        let sample_ratio = if mode == "full-traced" { 1.0 } else { 0.0 };
        // Request IDs are a feature of their own, measured apart: with
        // `LOAD_REQUEST_ID=1` the traced modes add them.
        let request_ids = std::env::var_os("LOAD_REQUEST_ID").is_some();
        let svc = ServiceBuilder::new()
            .option_layer((traced && request_ids).then(RequestIdLayer::new))
            .layer(RouteLayer::new(&table))
            // Tracing on: a server span per request, after the match so it
            // is named by its route.
            .option_layer(traced.then(|| TraceLayer::new().sample_ratio(sample_ratio)))
            .layer(MetricsLayer::new(&metrics))
            .layer(auth)
            .layer(rbac)
            .layer(limits)
            .service(Proxy::new(&table));
        serve(listener, svc).await
    }
}

/// Installs a tracing subscriber with the tracing-opentelemetry layer:
/// every trace sampled or none. Spans go, batched, to an exporter that
/// drops them. The returned provider flushes and stops when dropped.
#[cfg(feature = "otel")]
fn tracing_on(sampled: bool) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, BoxError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Drops what it is given: the cost measured is the gateway's, not an
    /// exporter's network I/O.
    #[derive(Debug)]
    struct Discard;

    impl SpanExporter for Discard {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            drop(batch);
            Ok(())
        }
    }

    let provider = SdkTracerProvider::builder()
        .with_sampler(if sampled {
            Sampler::AlwaysOn
        } else {
            Sampler::AlwaysOff
        })
        .with_batch_exporter(Discard)
        .build();
    // At INFO, as a production gateway runs: the server and attempt spans
    // are recorded, the libraries' debug and trace events are not.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("load_gateway")));
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(provider)
}

#[cfg(not(feature = "otel"))]
fn tracing_on(_sampled: bool) -> Result<(), BoxError> {
    Err("full-traced and full-unsampled need the `otel` feature".into())
}

/// Per consumer, at a rate no benchmark reaches.
async fn limits(
    redis: Option<&str>,
    metrics: RateLimitMetrics,
) -> Result<RateLimitLayer, BoxError> {
    let builder = RateLimitLayer::builder()
        .key(Consumer::subject().or(ClientIp::peer()))
        .limit(Limit::new().per_second(1_000_000).per_hour(1_000_000_000))
        .metrics(metrics);
    #[cfg(feature = "redis")]
    if let Some(url) = redis {
        use tower_gateway::ratelimit::{FailurePolicy, RedisBackend, RedisConfig};
        let backend = RedisBackend::connect(url, RedisConfig::default()).await?;
        let layer: tower_gateway::RedisRateLimitLayer = builder
            .redis(backend)
            .on_backend_error(FailurePolicy::Deny)
            .build()?;
        return Ok(layer);
    }
    #[cfg(not(feature = "redis"))]
    if redis.is_some() {
        return Err("full-redis needs the `redis` feature".into());
    }
    Ok(builder.build()?)
}

/// The crate's server (`server::serve`): HTTP/1.1 and HTTP/2, the edge
/// layer, `ClientAddr` in every request, its default limits.
async fn serve<S, B>(listener: TcpListener, svc: S) -> Result<(), BoxError>
where
    S: Service<Request<tower_gateway::server::Body>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Every load comes from loopback, one address: the per-IP cap must not
    // stand in for the overall one (the memory figures hold 10,000).
    tower_gateway::server::serve(listener, svc)
        .max_connections(20_000)
        .max_connections_per_ip(20_000)
        .await;
    Ok(())
}

/// A bare hyper-util accept loop (no deadlines, caps or edge layer), to
/// tell the server's share of the cost from the proxy's (target c0).
async fn serve_bare<S, B>(listener: TcpListener, svc: S) -> Result<(), BoxError>
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
        service::TowerToHyperService,
    };
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(tower_gateway::connection::ClientAddr(peer));
                req
            })
            .service(svc.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
}
