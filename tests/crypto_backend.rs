//! The signature backend: whatever features are on (`--all-features`
//! compiles both of jsonwebtoken's backends, where jsonwebtoken alone would
//! pick a provider that panics), the layer verifies every algorithm family
//! without anyone installing a provider by hand.
#![cfg(feature = "jwt")]
mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;
use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtKey};

/// One test, so that nothing else in this process touches jsonwebtoken
/// before the layer is built: the layer alone must make it work.
#[test]
fn layer_installs_a_working_backend_and_verifies_every_family() {
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    let layer = JwtAuthLayer::builder()
        .issuer(Issuer::new("iss").key(JwtKey::hmac(SECRET)))
        .build()
        .expect("a working crypto provider");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "iss", "sub": "alice", "exp": now() + 60}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let identity = layer.verify(&token).expect("HS256 verifies");
    assert_eq!(identity.subject(), Some("alice"));

    let k = keys();
    let layer = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::rsa_pem(&k.rsa.public_pem).unwrap().kid("rs"))
                .key(JwtKey::ec_pem(&k.ec256.public_pem).unwrap().kid("es256"))
                .key(JwtKey::ec_pem(&k.ec384.public_pem).unwrap().kid("es384"))
                .key(JwtKey::ed_pem(&k.ed.public_pem).unwrap().kid("ed")),
        )
        .cache_capacity(0)
        .build()
        .unwrap();
    for (alg, kid) in [
        (Algorithm::RS256, "rs"),
        (Algorithm::RS512, "rs"),
        (Algorithm::PS256, "rs"),
        (Algorithm::ES256, "es256"),
        (Algorithm::ES384, "es384"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let token = mint(alg, Some(kid), &claims("bob", &["user"]));
        let identity = layer
            .verify(&token)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.subject(), Some("bob"), "{alg:?}");
        // And a forgery is still refused by the same backend.
        let (signed, _) = token.rsplit_once('.').unwrap();
        let other = mint(alg, Some(kid), &claims("mallory", &["admin"]));
        let forged = format!("{signed}.{}", other.rsplit_once('.').unwrap().1);
        assert!(layer.verify(&forged).is_err(), "{alg:?} forgery accepted");
    }
}
