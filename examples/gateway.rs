//! A small gateway assembled from the crate's layers.
//!
//! It starts two servers on loopback:
//! - a development auth server (`127.0.0.1:9000`) that signs ES256 tokens and
//!   publishes its key through OIDC discovery and a JWKS, as Keycloak or
//!   Auth0 would;
//! - the gateway (`127.0.0.1:8080`): `MetricsLayer` (Prometheus metrics at
//!   `/metrics`), `JwtAuthLayer` (keys from the auth server's JWKS) and
//!   `RbacLayer` (one policy table) in front of the Order, Payment and
//!   Inventory handlers.
//!
//! ```sh
//! cargo run --example gateway
//! TOKEN=$(curl -s 'http://127.0.0.1:9000/token?sub=alice&roles=user' | jq -r .access_token)
//! curl -i -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders   # 201
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders           # 403: admin only
//! curl -i http://127.0.0.1:8080/orders                                             # 401
//! ```
//!
//! The full reference gateway (Consul discovery, rate limiting, circuit
//! breaking, metrics, mTLS to separate services) grows out of this file as
//! those layers land.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    extract::Query,
    http::{Method, StatusCode},
    routing::get,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_gateway::{
    Identity,
    auth::{Issuer, JwtAuthLayer},
    metrics::{GatewayMetrics, MetricsHandler, MetricsLayer},
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
};

const AUDIENCE: &str = "gateway";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let auth_addr: SocketAddr = std::env::var("AUTH_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9000".into())
        .parse()?;
    let gateway_addr: SocketAddr = std::env::var("GATEWAY_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let issuer = format!("http://{auth_addr}");

    let auth_listener = tokio::net::TcpListener::bind(auth_addr).await?;
    tokio::spawn(dev_auth_server(auth_listener, issuer.clone()));

    let metrics = GatewayMetrics::default();
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(issuer.clone())
                .audience(AUDIENCE)
                .oidc_discovery(),
        )
        .observer(metrics.observer())
        // Requests without a token reach RBAC, which lets public routes
        // (/health) through and answers 401 for the others.
        .allow_anonymous(true)
        .build()?;
    if !auth.wait_for_keys(Duration::from_secs(5)).await {
        return Err("the auth server published no keys".into());
    }

    let policy = Policy::builder()
        .rule(Rule::exact("/health").public())
        .rule(
            Rule::new("/orders")
                .methods([Method::GET])
                .any_of(["admin"]),
        )
        .rule(
            Rule::new("/orders")
                .methods([Method::POST])
                .any_of(["user"]),
        )
        .rule(
            Rule::new("/payments")
                .methods([Method::POST])
                .any_of(["user"]),
        )
        .rule(Rule::new("/payments").any_of(["admin"]))
        .rule(
            Rule::new("/inventory")
                .methods([Method::GET])
                .authenticated(),
        )
        .rule(Rule::new("/inventory").any_of(["admin"]))
        .deny_unmatched(true)
        .build()?;
    let rbac = RbacLayer::new(policy)
        .hierarchy(RoleHierarchy::new().inherit("admin", ["user"]))
        .observer(metrics.observer());

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders", get(list_orders).post(create_order))
        .route(
            "/payments",
            get(|| async { Json(json!({"payments": []})) }).post(pay),
        )
        .route(
            "/inventory",
            get(|| async { Json(json!({"items": {"sku-1": 3}})) }),
        )
        .layer(ServiceBuilder::new().layer(auth).layer(rbac))
        .layer(MetricsLayer::new(&metrics).route_from(|parts| {
            parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map(|m| m.as_str().to_owned())
        }))
        // Outside auth and metrics: Prometheus scrapes without a token, and
        // its scrapes are not counted as traffic.
        .route_service("/metrics", MetricsHandler::new(&metrics));
    let listener = tokio::net::TcpListener::bind(gateway_addr).await?;
    println!("auth server on http://{auth_addr}, gateway on http://{gateway_addr}");
    println!("token: curl -s 'http://{auth_addr}/token?sub=alice&roles=user'");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn list_orders(Extension(who): Extension<Identity>) -> Json<Value> {
    Json(json!({"orders": [], "requested_by": who.subject()}))
}

async fn create_order(Extension(who): Extension<Identity>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({"order_id": 1, "owner": who.subject()})),
    )
}

async fn pay(Extension(who): Extension<Identity>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({"payment": "pending", "payer": who.subject()})),
    )
}

/// A development auth server: ES256 keys made at start-up, OIDC discovery,
/// JWKS, and a `/token` endpoint that signs whatever subject and roles it is
/// asked for. Never expose it beyond loopback.
async fn dev_auth_server(listener: tokio::net::TcpListener, issuer: String) {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = match secret.to_pkcs8_pem(Default::default()) {
        Ok(pem) => pem,
        Err(e) => return eprintln!("auth server: {e}"),
    };
    let key = match EncodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(key) => Arc::new(key),
        Err(e) => return eprintln!("auth server: {e}"),
    };
    let mut jwk = match Jwk::from_encoding_key(&key, Algorithm::ES256) {
        Ok(jwk) => jwk,
        Err(e) => return eprintln!("auth server: {e}"),
    };
    jwk.common.key_id = Some("dev-1".into());
    let jwks = json!({ "keys": [jwk] });
    let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });

    let token = {
        let issuer = issuer.clone();
        move |Query(q): Query<HashMap<String, String>>| {
            let key = key.clone();
            let issuer = issuer.clone();
            async move {
                let now = jsonwebtoken::get_current_timestamp();
                let roles: Vec<&str> = q
                    .get("roles")
                    .map(|r| r.split(',').filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default();
                let claims = json!({
                    "iss": issuer, "aud": AUDIENCE,
                    "sub": q.get("sub").map_or("anonymous", String::as_str),
                    "roles": roles, "iat": now, "exp": now + 900,
                });
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some("dev-1".into());
                match jsonwebtoken::encode(&header, &claims, &key) {
                    Ok(t) => Ok(Json(
                        json!({"access_token": t, "token_type": "Bearer", "expires_in": 900}),
                    )),
                    Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        }
    };
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let doc = discovery.clone();
                async move { Json(doc) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let doc = jwks.clone();
                async move { Json(doc) }
            }),
        )
        .route("/token", get(token));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("auth server: {e}");
    }
}
