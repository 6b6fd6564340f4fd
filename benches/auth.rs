//! Cost of JWT verification and RBAC decisions.
//!
//! Every group carries its own reference measured in the same run, so the
//! figures can be read as ratios on a shared, noisy machine:
//! - `jwt/*`: against `jsonwebtoken::decode` of the same HS256 token with no
//!   layer around it (`jwt/reference_jsonwebtoken_hs256`).
//! - `rbac/*`: against `path/normalize` of the same path.
//! - `stack/*`: against calling the bare inner service.
//! - `forged/*`: an ES256 token with a forged signature (the valid header
//!   and claims of one token, the signature of another), against
//!   `jsonwebtoken::decode` refusing the same token
//!   (`forged/reference_jsonwebtoken_es256`); the `service_*` entries go
//!   through the whole layer from one client address, with neither defence,
//!   with the negative cache, and with that address's failure budget spent.
//!
//! Run: `cargo bench --bench auth`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{convert::Infallible, hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::{
    auth::{FailureBudget, Issuer, JwtAuthLayer, JwtKey},
    connection::ClientAddr,
    path::normalize,
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
};

fn layer(cache: usize) -> JwtAuthLayer {
    let k = keys();
    JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::hmac(HMAC_SECRET).kid("hs"))
                .key(JwtKey::rsa_pem(&k.rsa.public_pem).unwrap().kid("rs"))
                .key(JwtKey::ec_pem(&k.ec256.public_pem).unwrap().kid("es"))
                .key(JwtKey::ed_pem(&k.ed.public_pem).unwrap().kid("ed")),
        )
        .cache_capacity(cache)
        .build()
        .unwrap()
}

fn jwt(c: &mut Criterion) {
    let claims = claims("alice", &["user", "admin"]);
    let hs = mint(Algorithm::HS256, Some("hs"), &claims);
    let rs = mint(Algorithm::RS256, Some("rs"), &claims);
    let es = mint(Algorithm::ES256, Some("es"), &claims);
    let ed = mint(Algorithm::EdDSA, Some("ed"), &claims);
    let uncached = layer(0);
    let cached = layer(4096);

    let mut g = c.benchmark_group("jwt");
    let key = DecodingKey::from_secret(HMAC_SECRET);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    g.bench_function("reference_jsonwebtoken_hs256", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                black_box(&hs),
                &key,
                &validation,
            )
            .unwrap()
        })
    });
    for (name, token) in [
        ("hs256", &hs),
        ("rs256", &rs),
        ("es256", &es),
        ("eddsa", &ed),
    ] {
        g.bench_function(format!("{name}_uncached"), |b| {
            b.iter(|| uncached.verify(black_box(token)).unwrap())
        });
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| cached.verify(black_box(token)).unwrap())
        });
    }
    g.finish();
}

fn policy() -> Policy {
    Policy::builder()
        .rule(Rule::exact("/health").public())
        .rule(Rule::new("/public").public())
        .rule(
            Rule::new("/payments")
                .methods([Method::POST])
                .any_of(["payments-writer"]),
        )
        .rule(Rule::new("/payments").any_of(["payments-reader"]))
        .rule(
            Rule::new("/inventory/{sku}/reserve")
                .methods([Method::POST])
                .all_of(["user", "inventory"]),
        )
        .rule(Rule::new("/inventory").any_of(["user"]))
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
            Rule::exact("/orders/{id}")
                .methods([Method::DELETE])
                .any_of(["admin"]),
        )
        .deny_unmatched(true)
        .build()
        .unwrap()
}

fn rbac(c: &mut Criterion) {
    let policy = policy();
    let hierarchy = RoleHierarchy::new()
        .inherit("admin", ["user"])
        .inherit("user", ["viewer"]);
    let roles = vec!["admin".to_owned()];
    let path = normalize("/orders/7").unwrap();
    let mut g = c.benchmark_group("rbac");
    g.bench_function("reference_normalize", |b| {
        b.iter(|| normalize(black_box("/orders/7")).unwrap())
    });
    g.bench_function("decide_last_rule_via_hierarchy", |b| {
        b.iter(|| policy.decide(&Method::DELETE, black_box(&path), Some(&roles), &hierarchy))
    });
    let deep = normalize("/orders/7/items").unwrap();
    g.bench_function("decide_unmatched_deny", |b| {
        b.iter(|| policy.decide(&Method::PUT, black_box(&deep), Some(&roles), &hierarchy))
    });
    g.finish();
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = mint(Algorithm::HS256, Some("hs"), &claims("alice", &["admin"]));
    let bearer = format!("Bearer {token}");
    let inner =
        tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let mut bare = inner;
    let mut full = ServiceBuilder::new()
        .layer(layer(4096))
        .layer(RbacLayer::new(policy()).hierarchy(RoleHierarchy::new().inherit("admin", ["user"])))
        .service(inner);
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri("/orders")
            .header("authorization", &bearer)
            .body(())
            .unwrap()
    };
    let mut g = c.benchmark_group("stack");
    g.bench_function("reference_bare_service", |b| {
        b.iter(|| rt.block_on(async { bare.ready().await.unwrap().call(request()).await.unwrap() }))
    });
    g.bench_function("jwt_hs256_cached_plus_rbac", |b| {
        b.iter(|| {
            rt.block_on(async {
                let response = full.ready().await.unwrap().call(request()).await.unwrap();
                assert_eq!(response.status(), 200);
            })
        })
    });
    g.finish();
}

fn forged(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let genuine = mint(Algorithm::ES256, Some("es"), &claims("alice", &["admin"]));
    let other = mint(Algorithm::ES256, Some("es"), &claims("mallory", &["admin"]));
    let (signed, _) = genuine.rsplit_once('.').unwrap();
    let (_, signature) = other.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{signature}");
    let k = keys();

    let es_layer = |negative: usize, budget: Option<FailureBudget>| {
        let mut builder = JwtAuthLayer::builder()
            .issuer(
                Issuer::new(ISSUER)
                    .audience(AUDIENCE)
                    .key(JwtKey::ec_pem(&k.ec256.public_pem).unwrap().kid("es")),
            )
            .negative_cache_capacity(negative);
        if let Some(budget) = budget {
            builder = builder.failure_budget(budget);
        }
        builder.build().unwrap()
    };
    let plain = es_layer(0, None);
    let negative = es_layer(4096, None);
    let budgeted = es_layer(0, Some(FailureBudget::new(1, Duration::from_secs(3600))));
    assert!(plain.verify(&genuine).is_ok());

    let mut g = c.benchmark_group("forged");
    let key = DecodingKey::from_ec_pem(k.ec256.public_pem.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    g.bench_function("reference_jsonwebtoken_es256", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                black_box(&forged),
                &key,
                &validation,
            )
            .unwrap_err()
        })
    });
    g.bench_function("verify_es256_no_negative_cache", |b| {
        b.iter(|| plain.verify(black_box(&forged)).unwrap_err())
    });
    g.bench_function("verify_es256_negative_cache", |b| {
        b.iter(|| negative.verify(black_box(&forged)).unwrap_err())
    });

    let bearer = format!("Bearer {forged}");
    let request = || {
        let mut request = Request::builder()
            .uri("/orders")
            .header("authorization", &bearer)
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(ClientAddr("192.0.2.66:40000".parse().unwrap()));
        request
    };
    let inner =
        tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    for (name, layer, status) in [
        ("service_es256_no_defences", plain, 401),
        ("service_es256_negative_cache", negative, 401),
        ("service_es256_budget_spent", budgeted, 429),
    ] {
        let mut svc = ServiceBuilder::new().layer(layer).service(inner);
        // The first refusal fills the negative cache and spends the budget.
        rt.block_on(async { svc.ready().await.unwrap().call(request()).await.unwrap() });
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let response = svc.ready().await.unwrap().call(request()).await.unwrap();
                    assert_eq!(response.status(), status);
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, jwt, rbac, stack, forged);
criterion_main!(benches);
