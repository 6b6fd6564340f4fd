//! The reference gateway: a development auth server, the Order, Payment and
//! Inventory services, and the gateway in front of them — all on loopback.
//! SIGINT or SIGTERM shuts the gateway down gracefully (in-flight requests
//! finish; Consul registrations are removed).
//!
//! ```text
//! client ─► gateway 127.0.0.1:8080
//!             RouteLayer ─► AccessLogLayer ─► MetricsLayer ─► JwtAuthLayer ─► RbacLayer ─► RateLimitLayer
//!             ─► Proxy: P2C/peak-EWMA, per-endpoint breakers, retries, timeouts, mTLS
//!          ─► orders / payments / inventory (mTLS; JwtAuthLayer + RbacLayer again)
//! auth server 127.0.0.1:9000: OIDC discovery, JWKS, /token
//! ```
//!
//! ```sh
//! cargo run --example gateway
//! TOKEN=$(curl -s -d grant_type=password -d client_id=demo-cli -d username=alice \
//!     -d password=alice-password http://127.0.0.1:9000/token | jq -r .access_token)
//! curl -i -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
//!      -d '{"item":"book","quantity":1}' http://127.0.0.1:8080/orders        # 201
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders   # 403: admin only
//! curl -i http://127.0.0.1:8080/orders                                     # 401
//! curl -s http://127.0.0.1:9901/metrics                                    # Prometheus
//! ```
//!
//! The dev auth server's keys rotate hourly (`AUTH_KEY_ROTATION_SECS`; 0:
//! never), the next key published an interval before it signs and a
//! retired one until its tokens expire. `AUTH_STATE_FILE` with
//! `AUTH_STATE_KEY` (32 bytes as 64 hex digits or base64) keeps its keys
//! and refresh tokens across restarts, encrypted with AES-256-GCM;
//! `AUTH_KEY_FILE` instead pins one unrotated key in a plain PEM file.
//!
//! Environment: `GATEWAY_ADDR` (127.0.0.1:8080), `ADMIN_ADDR` (127.0.0.1:9901:
//! `/metrics`, `/healthz`, `/readyz`), `AUTH_ADDR`
//! (127.0.0.1:9000), `RATE_PER_SECOND` (5) and `RATE_PER_HOUR` (1000) per
//! consumer, `RATE_PER_IP_SECOND` (0, off) per client IP before
//! authentication, `AUTH_FAILURES_PER_MINUTE` (30; 0, off) failed tokens
//! per client address before 429, `SERVICE_METRICS_PORT` (8081: the services' own metrics on
//! 8081-8083; 0, off), `REDIS_URL` to share rate limits through Redis (feature
//! `redis`), `CONSUL_HTTP_ADDR` to register and discover the services in
//! Consul (feature `consul`), `RUST_LOG` for logs.
//!
//! Logs include the access log, one line per request (target
//! `tower_gateway::access`; `RUST_LOG=info,tower_gateway::access=off`
//! silences it).
//!
//! Traces (feature `otel`): with `OTEL_EXPORTER_OTLP_ENDPOINT` set (say
//! `http://127.0.0.1:4318`, a collector, Tempo or Jaeger), spans are
//! exported over OTLP HTTP/protobuf (plain HTTP). The other standard
//! variables apply as the OpenTelemetry SDK reads them:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default
//! `tower-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`. Nothing is installed globally: the tracer
//! provider lives in `main` and is flushed at shutdown.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 cargo run --example gateway --features otel
//! ```
//!
//! From a config file instead (`CONFIG.md` documents every option; the
//! environment variables above other than `RUST_LOG` and `OTEL_*` are then
//! not read). SIGHUP, or a change of the file, reloads it:
//!
//! ```sh
//! cargo run --example gateway -- --config examples/gateway/gateway.toml
//! cargo run --example gateway -- --config examples/gateway/gateway.toml --check
//! ```

mod app;

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, app::BoxError> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("invalid {name}: {value:?}").into()),
        Err(_) => Ok(default),
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans.
#[cfg(feature = "otel")]
type OtelLayer<S> =
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>;

/// The OTLP exporter and the tracing layer that feeds it, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or its traces-only variant) is set.
#[cfg(feature = "otel")]
fn otlp<S>()
-> Result<Option<(OtelLayer<S>, opentelemetry_sdk::trace::SdkTracerProvider)>, app::BoxError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    // The SDK's resource detectors read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES; a name is set only when neither gives one.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("tower-gateway");
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based,
    // always on).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tower-gateway"));
    Ok(Some((layer, provider)))
}

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};

    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer());
    #[cfg(feature = "otel")]
    let provider = {
        let (layer, provider) = otlp()?.unzip();
        registry.with(layer).init();
        provider
    };
    #[cfg(not(feature = "otel"))]
    registry.init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n\nusage: gateway [--config FILE [--check]]");
            std::process::exit(2);
        }
    };
    if let Some(path) = args.config {
        let loaded = match app::config::load_file(&path, &app::config::ProcessEnv) {
            Ok(loaded) => loaded,
            Err(errors) => {
                eprint!("{}: {errors}", path.display());
                std::process::exit(1);
            }
        };
        if args.check {
            match app::check(&loaded.config).await {
                Ok(matrix) => {
                    println!("{}: valid (version {})\n", path.display(), loaded.version);
                    print!("{matrix}");
                    return Ok(());
                }
                Err(errors) => {
                    eprint!("{}: {errors}", path.display());
                    std::process::exit(1);
                }
            }
        }
        let running = match app::start_from_config(loaded, Some(path.clone())).await {
            Ok(running) => running,
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                std::process::exit(1);
            }
        };
        if let Some(live) = &running.live {
            println!(
                "config       {} (version {})",
                path.display(),
                live.status().version
            );
        }
        println!("gateway      http://{}", running.gateway);
        println!(
            "admin        http://{}/metrics  /healthz  /readyz  /config",
            running.admin
        );
        for (name, addr) in &running.services {
            println!("{name:<12} https://{addr}  (mTLS)");
        }
        stop_signal().await?;
        tracing::info!("shutting down: finishing in-flight requests");
        let report = running.shutdown().await?;
        tracing::info!(open = report.open, cut = report.cut, "gateway stopped");
        #[cfg(feature = "otel")]
        if let Some(provider) = provider {
            provider.shutdown()?;
        }
        return Ok(());
    }
    let defaults = app::Config::default();
    let config = app::Config {
        gateway: env("GATEWAY_ADDR", defaults.gateway)?,
        auth: env("AUTH_ADDR", defaults.auth)?,
        admin: env("ADMIN_ADDR", defaults.admin)?,
        metrics_consumers: env("METRICS_CONSUMERS", 0u8)? == 1,
        redis_url: std::env::var("REDIS_URL").ok(),
        consul: std::env::var("CONSUL_HTTP_ADDR").is_ok(),
        per_second: env("RATE_PER_SECOND", defaults.per_second)?,
        per_hour: env("RATE_PER_HOUR", defaults.per_hour)?,
        per_ip_second: env("RATE_PER_IP_SECOND", defaults.per_ip_second)?,
        auth_failures_per_minute: env(
            "AUTH_FAILURES_PER_MINUTE",
            defaults.auth_failures_per_minute,
        )?,
        // The services' own metrics on 8081-8083, where
        // examples/observability/prometheus.yml looks (0: off).
        service_metrics_port: match env("SERVICE_METRICS_PORT", 8081u16)? {
            0 => None,
            port => Some(port),
        },
        server: defaults.server,
    };
    let config_metrics_port = config.service_metrics_port;
    let running = app::start(config).await?;
    println!("gateway      http://{}", running.gateway);
    println!(
        "auth server  http://{}  (POST /token: grant_type=password, client_id=demo-cli, alice/alice-password, root/root-password)",
        running.auth
    );
    for (name, addr) in &running.services {
        println!("{name:<12} https://{addr}  (mTLS)");
    }
    println!(
        "admin        http://{}/metrics  /healthz  /readyz",
        running.admin
    );
    if let Some(port) = config_metrics_port {
        println!(
            "service metrics on http://127.0.0.1:{port}-{}/metrics",
            port + 2
        );
    }
    // Ready-to-paste commands, with tokens obtained the way a client
    // would: the password grant at the auth server's token endpoint.
    match (
        demo_token(running.auth, "alice", "alice-password").await,
        demo_token(running.auth, "root", "root-password").await,
    ) {
        (Ok(user), Ok(admin)) => {
            let gw = running.gateway;
            println!();
            println!("USER_TOKEN={user}");
            println!("ADMIN_TOKEN={admin}");
            println!(
                "curl -i -X POST -H \"Authorization: Bearer $USER_TOKEN\" -H 'content-type: application/json' -d '{{\"item\":\"book\",\"quantity\":1}}' http://{gw}/orders   # 201"
            );
            println!(
                "curl -i -H \"Authorization: Bearer $USER_TOKEN\" http://{gw}/orders    # 403: admins only"
            );
            println!(
                "curl -i -H \"Authorization: Bearer $ADMIN_TOKEN\" http://{gw}/orders   # 200"
            );
            println!("curl -i http://{gw}/orders                                          # 401");
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "could not obtain the demo tokens");
        }
    }
    stop_signal().await?;
    tracing::info!("shutting down: finishing in-flight requests");
    let report = running.shutdown().await?;
    tracing::info!(open = report.open, cut = report.cut, "gateway stopped");
    #[cfg(feature = "otel")]
    if let Some(provider) = provider {
        // Exports the spans still batched.
        provider.shutdown()?;
    }
    Ok(())
}

/// The command line: `--config FILE` and `--check`.
#[derive(Debug, Default)]
struct Args {
    config: Option<std::path::PathBuf>,
    check: bool,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" | "-c" => {
                    let path = args.next().ok_or("--config needs a file")?;
                    parsed.config = Some(path.into());
                }
                "--check" => parsed.check = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.check && parsed.config.is_none() {
            return Err("--check needs --config FILE".into());
        }
        Ok(parsed)
    }
}

/// SIGINT (Ctrl-C) or SIGTERM (`docker stop`, Kubernetes).
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

/// An access token for a demo user, from the auth server's token endpoint
/// (RFC 6749 §4.3, the password grant, as the public client `demo-cli`).
async fn demo_token(
    auth: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Result<String, app::BoxError> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let form =
        format!("grant_type=password&client_id=demo-cli&username={user}&password={password}");
    let request = http::Request::post(format!("http://{auth}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(bytes::Bytes::from(form)))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("token endpoint answered {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    json["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no access_token in the answer".into())
}
