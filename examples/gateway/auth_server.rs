//! A development auth server: ES256 keys made at start-up, OIDC discovery,
//! a JWKS, and a `/token` endpoint that signs whatever subject and roles it
//! is asked for — Keycloak or Auth0 in a few lines. Never expose it beyond
//! loopback.

use std::{collections::HashMap, sync::Arc};

use axum::{Json, Router, extract::Query, http::StatusCode, routing::get};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The audience of every token (the gateway and the services).
pub const AUDIENCE: &str = "shop";

pub async fn serve(
    listener: TcpListener,
    issuer: String,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret.to_pkcs8_pem(Default::default())?;
    let key = Arc::new(EncodingKey::from_ec_pem(pem.as_bytes())?);
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
    jwk.common.key_id = Some("dev-1".into());
    let jwks = json!({ "keys": [jwk] });
    let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });

    let token = move |Query(q): Query<HashMap<String, String>>| {
        let key = key.clone();
        let issuer = issuer.clone();
        async move {
            let now = jsonwebtoken::get_current_timestamp();
            let ttl: u64 = q
                .get("ttl")
                .and_then(|t| t.parse().ok())
                .unwrap_or(900)
                .min(86_400);
            let roles: Vec<&str> = q
                .get("roles")
                .map(|r| r.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            let claims = json!({
                "iss": issuer, "aud": AUDIENCE,
                "sub": q.get("sub").map_or("anonymous", String::as_str),
                "roles": roles, "iat": now, "exp": now + ttl,
            });
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("dev-1".into());
            match jsonwebtoken::encode(&header, &claims, &key) {
                Ok(t) => Ok(Json(
                    json!({"access_token": t, "token_type": "Bearer", "expires_in": ttl}),
                )),
                Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    };
    let doc = |value: Value| {
        move || {
            let value = value.clone();
            async move { Json(value) }
        }
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(doc(discovery)))
        .route("/jwks", get(doc(jwks)))
        .route("/token", get(token));
    axum::serve(listener, app).await?;
    Ok(())
}
