//! Shared test fixtures: keys for every algorithm family, generated at test
//! time, and tokens minted with the same libraries an auth server would use.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

pub const HMAC_SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "orders-api";

/// One key pair: private PEM for minting, public PEM for verifying.
pub struct Pair {
    pub private_pem: String,
    pub public_pem: String,
}

pub struct Keys {
    pub rsa: Pair,
    pub rsa2: Pair,
    pub ec256: Pair,
    pub ec384: Pair,
    pub ed: Pair,
}

fn generate() -> Keys {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    use rand::rngs::OsRng;
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    let rsa_pair = || {
        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa keygen");
        Pair {
            private_pem: private
                .to_pkcs1_pem(Default::default())
                .unwrap()
                .to_string(),
            public_pem: private
                .to_public_key()
                .to_pkcs1_pem(Default::default())
                .unwrap(),
        }
    };
    let ec256 = p256::SecretKey::random(&mut OsRng);
    let ec384 = p384::SecretKey::random(&mut OsRng);
    let ed = ed25519_dalek::SigningKey::generate(&mut OsRng);
    Keys {
        rsa: rsa_pair(),
        rsa2: rsa_pair(),
        ec256: Pair {
            private_pem: ec256.to_pkcs8_pem(Default::default()).unwrap().to_string(),
            public_pem: ec256
                .public_key()
                .to_public_key_pem(Default::default())
                .unwrap(),
        },
        ec384: Pair {
            private_pem: ec384.to_pkcs8_pem(Default::default()).unwrap().to_string(),
            public_pem: ec384
                .public_key()
                .to_public_key_pem(Default::default())
                .unwrap(),
        },
        ed: Pair {
            private_pem: ed.to_pkcs8_pem(Default::default()).unwrap().to_string(),
            public_pem: ed
                .verifying_key()
                .to_public_key_pem(Default::default())
                .unwrap(),
        },
    }
}

/// Keys shared by every test of one test binary (generated once).
pub fn keys() -> &'static Keys {
    // Before anything uses jsonwebtoken: with both of its backends compiled
    // in (`--all-features`), it cannot pick one itself.
    tower_gateway::auth::install_crypto_backend();
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(generate)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard valid claims: issuer, audience, subject, roles, exp in 10 min.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "roles": roles,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// The private signing key for `alg` (the primary key of each family).
pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    let k = keys();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HMAC_SECRET)
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(k.rsa.private_pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(k.ec256.private_pem.as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(k.ec384.private_pem.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(k.ed.private_pem.as_bytes()).unwrap(),
        _ => unreachable!(),
    }
}

/// Mints a token with `alg` and an optional `kid`.
pub fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    mint_with(&encoding_key(alg), alg, kid, claims)
}

pub fn mint_with(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    tower_gateway::auth::install_crypto_backend();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The public JWK of a private key, with `kid` and `alg` set.
pub fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    tower_gateway::auth::install_crypto_backend();
    let mut jwk: Jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// base64url without padding.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token with arbitrary header and claims and a garbage signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Every algorithm the crate supports.
pub const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Starts a tiny HTTP/1 server on a free loopback port that answers every
/// request with `handler`; returns its address. The server lives as long as
/// the test's runtime.
pub async fn serve<F, Fut>(handler: F) -> std::net::SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
