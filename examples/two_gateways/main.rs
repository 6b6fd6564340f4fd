//! Two (or more) gateway instances that discover the `orders` service
//! through Consul and share per-consumer limits through Redis
//! (`gateway.rs` has the stack). Run one process per instance:
//!
//! ```sh
//! redis-server --port 6379 &
//! consul agent -dev &                                   # HTTP API on 127.0.0.1:8500
//! mkdir -p /tmp/svc/orders && python3 -m http.server -d /tmp/svc 9000 &  # stands in for the orders service
//! curl -X PUT localhost:8500/v1/agent/service/register \
//!      -d '{"ID":"orders-1","Name":"orders","Address":"127.0.0.1","Port":9000}'
//!
//! export JWT_SECRET=$(openssl rand -hex 32)             # the same for every instance
//! cargo run --features redis,consul --example two_gateways -- 8080 &
//! cargo run --features redis,consul --example two_gateways -- 8081 &
//! ```
//!
//! Each instance prints a `user` token (alice). Five requests a minute for
//! her, whichever gateway they reach:
//!
//! ```sh
//! for port in 8080 8080 8080 8081 8081; do
//!   curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $USER_TOKEN" localhost:$port/orders/
//! done                                                  # 200 ×5
//! curl -i -H "Authorization: Bearer $USER_TOKEN" localhost:8081/orders/   # 429, Retry-After
//! curl -i localhost:8080/orders/                        # 401, WWW-Authenticate: Bearer
//! ```
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379/`) and `CONSUL_HTTP_ADDR`
//! (default `http://127.0.0.1:8500`) point it elsewhere. Ctrl-C stops it
//! gracefully.

mod gateway;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;
use tower::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse()?,
        None => 8080,
    };
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let settings = gateway::Settings {
        redis_url: env("REDIS_URL", "redis://127.0.0.1:6379/"),
        consul_addr: env("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"),
        // Every instance must verify the same tokens: no random default.
        jwt_secret: std::env::var("JWT_SECRET")
            .map_err(|_| "set JWT_SECRET, the same for every instance")?
            .into_bytes(),
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("gateway on http://{}", listener.local_addr()?);
    println!(
        "export USER_TOKEN={}",
        token(&settings.jwt_secret, "alice", &["user"])?
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    gateway::gateway(listener, settings, ctrl_c).await
}

/// A token your auth server would issue: ten minutes, `roles` claim.
fn token(secret: &[u8], subject: &str, roles: &[&str]) -> Result<String, BoxError> {
    // jsonwebtoken needs its signature backend chosen when more than one is
    // compiled in (`--all-features`).
    tower_gateway::auth::install_crypto_backend();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": gateway::ISSUER, "sub": subject, "roles": roles, "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}
