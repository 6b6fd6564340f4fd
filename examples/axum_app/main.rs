//! The crate's layers on an existing axum app: JWT authentication, role
//! checks per route, rate limits per consumer, refusals rendered once
//! (`app.rs` has the router and the table of routes).
//!
//! ```sh
//! cargo run --example axum_app
//! ```
//!
//! It serves on 127.0.0.1:3000 and prints a `user` token (alice) and an
//! `admin` token (root), signed with `JWT_SECRET` (HS256; a random secret
//! when unset, so the tokens die with the process). Then:
//!
//! ```sh
//! curl -i localhost:3000/health                                   # 200, no token needed
//! curl -i localhost:3000/orders                                   # 401, WWW-Authenticate: Bearer
//! curl -i -H "Authorization: Bearer $USER_TOKEN" localhost:3000/orders  # 403: admin only
//! curl -i -H "Authorization: Bearer $USER_TOKEN" -H 'content-type: application/json' \
//!      -d '{"item":"tea"}' localhost:3000/orders                  # 201; the 4th in a minute: 429, Retry-After
//! curl -i -H "Authorization: Bearer $ADMIN_TOKEN" localhost:3000/orders # 200, every order
//! curl -i -H "Authorization: Bearer $USER_TOKEN" localhost:3000/orders/1  # 200: alice's own order
//! ```

mod app;

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
    let router = app::app(&secret)?;
    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    println!("orders app on http://{}", listener.local_addr()?);
    println!("export USER_TOKEN={}", token(&secret, "alice", &["user"])?);
    println!("export ADMIN_TOKEN={}", token(&secret, "root", &["admin"])?);
    axum::serve(listener, router).await?;
    Ok(())
}

/// A token your auth server would issue: ten minutes, `roles` claim.
fn token(secret: &[u8], subject: &str, roles: &[&str]) -> Result<String, BoxError> {
    // jsonwebtoken needs its signature backend chosen when more than one is
    // compiled in (`--all-features`).
    tower_gateway::auth::install_crypto_backend();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": app::ISSUER, "aud": app::AUDIENCE, "sub": subject, "roles": roles,
        "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}
