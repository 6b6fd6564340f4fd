//! A tonic gRPC service with JWT authentication, role checks per method and
//! rate limits per consumer, answering refusals with gRPC status codes
//! (`orders.rs` has the service, its proto and the layers).
//!
//! ```sh
//! cargo run --example tonic_service
//! ```
//!
//! It serves on 127.0.0.1:50051 and prints a `user` token (alice) and an
//! `admin` token (root), signed with `JWT_SECRET` (HS256; a random secret
//! when unset). Any gRPC client works (grpcurl with `-proto` and the proto
//! in `orders.rs`); so does curl, with the message framed by hand
//! (`\0\0\0\0\2` is "uncompressed, 2 bytes"; `\10\7` is `id: 7`):
//!
//! ```sh
//! call() { printf '\0\0\0\0\2\10\7' | curl -si --http2-prior-knowledge \
//!   -H 'content-type: application/grpc' -H 'te: trailers' "$@" \
//!   --data-binary @- http://127.0.0.1:50051/orders.v1.Orders/$METHOD | grep -ai grpc-; }
//! METHOD=GetOrder call                                               # grpc-status: 16, UNAUTHENTICATED
//! METHOD=CancelOrder call -H "authorization: Bearer $USER_TOKEN"     # grpc-status: 7, PERMISSION_DENIED
//! METHOD=GetOrder call -H "authorization: Bearer $USER_TOKEN"        # grpc-status: 0 (in the trailers)
//! for i in 1 2 3 4 5 6; do METHOD=GetOrder call -H "authorization: Bearer $USER_TOKEN"; done
//!                                                                    # the 6th in a minute: grpc-status: 8, RESOURCE_EXHAUSTED
//! ```

mod orders;

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
    let listener = TcpListener::bind("127.0.0.1:50051").await?;
    println!("orders.v1.Orders on {}", listener.local_addr()?);
    println!("export USER_TOKEN={}", token(&secret, "alice", &["user"])?);
    println!("export ADMIN_TOKEN={}", token(&secret, "root", &["admin"])?);
    orders::serve(listener, &secret).await
}

/// A token your auth server would issue: ten minutes, `roles` claim.
fn token(secret: &[u8], subject: &str, roles: &[&str]) -> Result<String, BoxError> {
    // jsonwebtoken needs its signature backend chosen when more than one is
    // compiled in (`--all-features`).
    tower_gateway::auth::install_crypto_backend();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": orders::ISSUER, "aud": orders::AUDIENCE, "sub": subject, "roles": roles,
        "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}
