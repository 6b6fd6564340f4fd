//! The three-route gateway of the crate documentation, on 127.0.0.1:8080 in
//! front of a service on 127.0.0.1:3000 (`PER_IP` sets a per-IP limit per
//! second; unset, there is none).

mod gateway;

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    let per_ip = std::env::var("PER_IP").ok().and_then(|v| v.parse().ok());
    gateway::gateway(listener, "127.0.0.1:3000".parse()?, per_ip).await
}
