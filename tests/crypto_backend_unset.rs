//! With both of jsonwebtoken's backends compiled in (features `aws-lc` and
//! `rust-crypto`, as under `--all-features`), a
//! program that uses jsonwebtoken before building a layer fixes
//! jsonwebtoken's panicking placeholder provider. The layer then refuses to
//! build, with a typed error, instead of panicking on every request.
#![cfg(all(feature = "aws-lc", feature = "rust-crypto"))]

use jsonwebtoken::{EncodingKey, Header};
use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtConfigError, JwtKey};

#[test]
fn a_broken_provider_is_a_config_error_not_a_request_panic() {
    let used_first = std::panic::catch_unwind(|| {
        jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({}),
            &EncodingKey::from_secret(b"k"),
        )
    });
    assert!(used_first.is_err(), "jsonwebtoken picked a provider itself");
    let built = JwtAuthLayer::builder()
        .issuer(Issuer::new("iss").key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
        .build();
    assert!(
        matches!(built, Err(JwtConfigError::CryptoProvider)),
        "{built:?}"
    );
}
