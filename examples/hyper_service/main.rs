//! A bare hyper `service_fn` behind JWT authentication, role checks and
//! per-consumer limits declared in the crate's route model, served by
//! `server::serve` (`service.rs` has the routes, the stack and the handler).
//!
//! ```sh
//! cargo run --example hyper_service
//! ```
//!
//! It serves on 127.0.0.1:8080 until Ctrl-C, and prints a `user` token
//! (alice) and an `admin` token (root), signed with `JWT_SECRET` (HS256; a
//! random secret when unset). Then:
//!
//! ```sh
//! curl -i localhost:8080/health                                          # 200, no token needed
//! curl -i localhost:8080/orders                                          # 401, WWW-Authenticate: Bearer
//! curl -i -H "Authorization: Bearer $USER_TOKEN" localhost:8080/orders   # 403: admin only
//! curl -i -H "Authorization: Bearer $USER_TOKEN" -X POST localhost:8080/orders  # 201
//! curl -i -H "Authorization: Bearer $USER_TOKEN" localhost:8080/orders/7 # 200; the 6th /orders call in a minute: 429, Retry-After
//! curl -i -H "Authorization: Bearer $ADMIN_TOKEN" -X DELETE localhost:8080/orders  # 405, Allow: GET, HEAD, POST
//! curl -i localhost:8080/nowhere                                         # 404
//! ```

mod service;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;
use tower::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let secret = match std::env::var("JWT_SECRET") {
        Ok(secret) => secret.into_bytes(),
        Err(_) => rand::random::<[u8; 32]>().to_vec(),
    };
    let listener = TcpListener::bind("127.0.0.1:8080").await?;
    println!("orders on http://{}", listener.local_addr()?);
    println!("export USER_TOKEN={}", token(&secret, "alice", &["user"])?);
    println!("export ADMIN_TOKEN={}", token(&secret, "root", &["admin"])?);
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = service::serve(listener, &secret, ctrl_c).await?;
    println!(
        "stopped: {} connections were open, {} cut",
        report.open, report.cut
    );
    Ok(())
}

/// A token your auth server would issue: ten minutes, `roles` claim.
fn token(secret: &[u8], subject: &str, roles: &[&str]) -> Result<String, BoxError> {
    // jsonwebtoken needs its signature backend chosen when more than one is
    // compiled in (`--all-features`).
    tower_gateway::auth::install_crypto_backend();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": service::ISSUER, "aud": service::AUDIENCE, "sub": subject, "roles": roles,
        "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}
