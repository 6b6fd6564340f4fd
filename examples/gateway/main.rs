//! The reference gateway: a development auth server, the Order, Payment and
//! Inventory services, and the gateway in front of them — all on loopback.
//!
//! ```text
//! client ─► gateway 127.0.0.1:8080
//!             RouteLayer ─► MetricsLayer ─► JwtAuthLayer ─► RbacLayer ─► RateLimitLayer
//!             ─► Proxy: P2C/peak-EWMA, per-endpoint breakers, retries, timeouts, mTLS
//!          ─► orders / payments / inventory (mTLS; JwtAuthLayer + RbacLayer again)
//! auth server 127.0.0.1:9000: OIDC discovery, JWKS, /token
//! ```
//!
//! ```sh
//! cargo run --example gateway
//! TOKEN=$(curl -s 'http://127.0.0.1:9000/token?sub=alice&roles=user' | jq -r .access_token)
//! curl -i -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
//!      -d '{"item":"book","quantity":1}' http://127.0.0.1:8080/orders        # 201
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders   # 403: admin only
//! curl -i http://127.0.0.1:8080/orders                                     # 401
//! curl -s http://127.0.0.1:8080/metrics                                    # Prometheus
//! ```
//!
//! Environment: `GATEWAY_ADDR` (127.0.0.1:8080), `AUTH_ADDR`
//! (127.0.0.1:9000), `RATE_PER_SECOND` (5) and `RATE_PER_HOUR` (1000) per
//! consumer, `RATE_PER_IP_SECOND` (0, off) per client IP before
//! authentication, `REDIS_URL` to share rate limits through Redis (feature
//! `redis`), `CONSUL_HTTP_ADDR` to register and discover the services in
//! Consul (feature `consul`), `RUST_LOG` for logs.

mod app;

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, app::BoxError> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("invalid {name}: {value:?}").into()),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let defaults = app::Config::default();
    let config = app::Config {
        gateway: env("GATEWAY_ADDR", defaults.gateway)?,
        auth: env("AUTH_ADDR", defaults.auth)?,
        redis_url: std::env::var("REDIS_URL").ok(),
        consul: std::env::var("CONSUL_HTTP_ADDR").is_ok(),
        per_second: env("RATE_PER_SECOND", defaults.per_second)?,
        per_hour: env("RATE_PER_HOUR", defaults.per_hour)?,
        per_ip_second: env("RATE_PER_IP_SECOND", defaults.per_ip_second)?,
        server: defaults.server,
    };
    let running = app::start(config).await?;
    println!("gateway      http://{}", running.gateway);
    println!(
        "auth server  http://{}  (token: /token?sub=alice&roles=user)",
        running.auth
    );
    for (name, addr) in &running.services {
        println!("{name:<12} https://{addr}  (mTLS)");
    }
    println!("metrics      http://{}/metrics", running.gateway);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
