#![cfg(feature = "jwt")]
mod support;

use support::*;
use tower_gateway::auth::{Issuer, JwtAuthLayer, JwtKey};

#[test]
fn every_algorithm_family_verifies() {
    let k = keys();
    let layer = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::hmac(HMAC_SECRET).kid("hs"))
                .key(JwtKey::rsa_pem(&k.rsa.public_pem).unwrap().kid("rs"))
                .key(JwtKey::ec_pem(&k.ec256.public_pem).unwrap().kid("es256"))
                .key(JwtKey::ec_pem(&k.ec384.public_pem).unwrap().kid("es384"))
                .key(JwtKey::ed_pem(&k.ed.public_pem).unwrap().kid("ed")),
        )
        .build()
        .unwrap();
    for alg in ALL_ALGORITHMS {
        let kid = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Hmac => "hs",
            jsonwebtoken::AlgorithmFamily::Rsa => "rs",
            jsonwebtoken::AlgorithmFamily::Ec if alg == jsonwebtoken::Algorithm::ES256 => "es256",
            jsonwebtoken::AlgorithmFamily::Ec => "es384",
            jsonwebtoken::AlgorithmFamily::Ed => "ed",
        };
        let token = mint(alg, Some(kid), &claims("alice", &["user"]));
        let identity = layer
            .verify(&token)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.subject(), Some("alice"));
        assert!(identity.has_role("user"));
    }
}
