//! Attacks on `JwtAuthLayer` driven through a real tower stack, plus the
//! positive paths (every algorithm family, token sources, anonymous and
//! preflight passthrough, forwarded identity headers, several issuers, the
//! verified-token cache).
//!
//! Every refusal must be a 401 with a `WWW-Authenticate: Bearer` challenge
//! and an RFC 9457 problem body, must never reach the inner service, and must
//! never tell the client which check failed or leak key material.
#![cfg(feature = "jwt")]
mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::{Value, json};
use support::*;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};
use tower_gateway::{
    auth::{Issuer, JwtAuthBuilder, JwtAuthLayer, JwtKey},
    identity::Identity,
    reject::ResponseBody,
};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

type Req = Request<Full<Bytes>>;
type Svc = BoxCloneService<Req, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The layer in front of an inner service that counts its calls and echoes
/// what it saw (identity, forwarded identity headers) as JSON.
struct Gateway {
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the inner service saw of the request.
fn upstream_view(req: &Req) -> Value {
    let identity = req.extensions().get::<Identity>();
    let all = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
    };
    json!({
        "identity": identity.is_some(),
        "sub": identity.and_then(Identity::subject),
        "iss": identity.and_then(Identity::issuer),
        "roles": identity.map(|i| i.roles().to_vec()).unwrap_or_default(),
        "x-user-id": all("x-user-id"),
        "x-user-roles": all("x-user-roles"),
        "headers": req.headers().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
    })
}

impl Gateway {
    fn new(layer: JwtAuthLayer) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(tower_gateway::reject::RenderLayer::new())
            .layer(layer)
            .service_fn(move |req: Req| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = upstream_view(&req).to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
        Self {
            svc: BoxCloneService::new(svc),
            calls,
        }
    }

    fn build(builder: JwtAuthBuilder) -> Self {
        Self::new(builder.build().expect("valid layer configuration"))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn send(&self, req: Req) -> Reply {
        let response = self.svc.clone().oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends `req`, expects the inner service to be reached with an identity
    /// whose subject is `sub`; returns what the inner service saw.
    async fn expect_ok(&self, req: Req, sub: &str, what: &str) -> Value {
        let before = self.calls();
        let reply = self.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        assert_eq!(
            self.calls(),
            before + 1,
            "{what}: inner service not called once"
        );
        let seen = reply.json();
        assert_eq!(seen["identity"], true, "{what}: no Identity in extensions");
        assert_eq!(seen["sub"], sub, "{what}");
        seen
    }

    /// Sends `req`, expects a 401 that never reached the inner service.
    async fn expect_refused(&self, req: Req, expect: Challenge, what: &str) -> Reply {
        let before = self.calls();
        let reply = self.send(req).await;
        assert_eq!(self.calls(), before, "{what}: inner service was called");
        assert_rejection(&reply, expect, what);
        reply
    }

    async fn refuse_token(&self, token: &str, what: &str) -> Reply {
        self.expect_refused(bearer(token), Challenge::Invalid, what)
            .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Challenge {
    /// No credentials: RFC 6750 §3.1, no `error` parameter.
    Missing,
    /// A token was sent and refused: `error="invalid_token"`.
    Invalid,
}

/// Words and material that must never appear in what a client is told.
fn forbidden_fragments() -> Vec<String> {
    let k = keys();
    // One base64 line from the middle of each public key.
    let pem_line = |pem: &str| pem.lines().nth(2).unwrap_or_default().to_owned();
    vec![
        "signature".into(),
        "key".into(),
        "-----begin".into(),
        String::from_utf8(HMAC_SECRET.to_vec())
            .unwrap()
            .to_lowercase(),
        pem_line(&k.rsa.public_pem).to_lowercase(),
        pem_line(&k.ec256.public_pem).to_lowercase(),
    ]
}

fn assert_rejection(reply: &Reply, expect: Challenge, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        reply.text()
    );
    let challenges: Vec<_> = reply
        .headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(challenges.len(), 1, "{what}: {challenges:?}");
    let challenge = &challenges[0];
    assert!(
        challenge == "Bearer" || challenge.starts_with("Bearer "),
        "{what}: {challenge}"
    );
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    let problem = reply.json();
    assert_eq!(problem["type"], "about:blank", "{what}");
    assert_eq!(problem["title"], "Unauthorized", "{what}");
    assert_eq!(problem["status"], 401, "{what}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "{what}: empty detail");
    match expect {
        Challenge::Missing => {
            assert!(!challenge.contains("error"), "{what}: {challenge}");
            assert_eq!(problem["code"], "missing_token", "{what}");
        }
        Challenge::Invalid => {
            assert!(
                challenge.contains(r#"error="invalid_token""#),
                "{what}: {challenge}"
            );
            assert!(
                challenge.contains(&format!(r#"error_description="{detail}""#)),
                "{what}: {challenge}"
            );
            assert_eq!(problem["code"], "invalid_token", "{what}");
        }
    }
    let told = format!("{challenge}\n{}", reply.text()).to_lowercase();
    for fragment in forbidden_fragments() {
        assert!(
            !told.contains(&fragment),
            "{what}: response mentions {fragment:?}: {told}"
        );
    }
}

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn get() -> Req {
    request(Method::GET, "/orders")
        .body(Full::default())
        .unwrap()
}

fn bearer(token: &str) -> Req {
    with_authorization(&format!("Bearer {token}"))
}

fn with_authorization(value: &str) -> Req {
    request(Method::GET, "/orders")
        .header(header::AUTHORIZATION, value)
        .body(Full::default())
        .unwrap()
}

fn hs_key() -> JwtKey {
    JwtKey::hmac(HMAC_SECRET)
}

fn rsa_key() -> JwtKey {
    JwtKey::rsa_pem(&keys().rsa.public_pem).unwrap()
}

/// One issuer with every family's key (kids: hs, rs, es256, es384, ed).
fn all_families_issuer() -> Issuer {
    let k = keys();
    Issuer::new(ISSUER)
        .audience(AUDIENCE)
        .key(hs_key().kid("hs"))
        .key(rsa_key().kid("rs"))
        .key(JwtKey::ec_pem(&k.ec256.public_pem).unwrap().kid("es256"))
        .key(JwtKey::ec_pem(&k.ec384.public_pem).unwrap().kid("es384"))
        .key(JwtKey::ed_pem(&k.ed.public_pem).unwrap().kid("ed"))
}

fn kid_for(alg: Algorithm) -> &'static str {
    match alg.family() {
        AlgorithmFamily::Hmac => "hs",
        AlgorithmFamily::Rsa => "rs",
        AlgorithmFamily::Ec if alg == Algorithm::ES256 => "es256",
        AlgorithmFamily::Ec => "es384",
        AlgorithmFamily::Ed => "ed",
    }
}

/// A gateway with the HMAC secret (no kid) and the RSA key (no kid).
fn simple_gateway() -> Gateway {
    Gateway::build(
        JwtAuthLayer::builder().issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(hs_key())
                .key(rsa_key()),
        ),
    )
}

fn valid() -> Value {
    claims("alice", &["user"])
}

/// `claims` with `edit` applied.
fn claims_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = valid();
    edit(c.as_object_mut().unwrap());
    c
}

fn hs256(claims: &Value) -> String {
    mint(Algorithm::HS256, None, claims)
}

/// A compact JWS over arbitrary header and payload bytes, signed for real.
fn sign_raw(header: &Value, payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

// ---------------------------------------------------------------------------
// Attacks: every one is a 401 that never reaches the inner service.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_token_is_a_bare_challenge() {
    let gw = simple_gateway();
    gw.expect_refused(get(), Challenge::Missing, "no Authorization")
        .await;
    // Another scheme is "no bearer token", not a malformed one.
    gw.expect_refused(
        with_authorization("Basic YWxpY2U6c2VjcmV0"),
        Challenge::Missing,
        "Basic credentials",
    )
    .await;
    // The token is only read from a cookie when that source is enabled.
    let cookie_only = request(Method::GET, "/orders")
        .header(header::COOKIE, format!("access_token={}", hs256(&valid())))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(cookie_only, Challenge::Missing, "cookie source disabled")
        .await;
    let query_only = request(
        Method::GET,
        &format!("/orders?access_token={}", hs256(&valid())),
    )
    .body(Full::default())
    .unwrap();
    gw.expect_refused(query_only, Challenge::Missing, "query source disabled")
        .await;

    // With a realm, the challenge is exactly `Bearer realm="..."` (RFC 6750
    // §3.1: no error code when no credentials were sent) ...
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).key(hs_key()))
            .realm("gateway"),
    );
    let reply = gw
        .expect_refused(get(), Challenge::Missing, "no token, realm")
        .await;
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="gateway""#
    );
    // ... and an invalid token gets the realm and `invalid_token`.
    let reply = gw.refuse_token("garbage", "garbage, realm").await;
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="gateway", error="invalid_token", error_description="the access token is invalid""#
    );
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let gw = simple_gateway();
    for value in [
        "Bearer ",
        "Bearer",
        "Bearer    ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer a.b",
        "Bearer a b",
        "Bearer abc$def",
        "Bearer \"abc\"",
        "Bearer eyJhbGciOiJIUzI1NiJ9",
        "Bearer eyJhbGciOiJIUzI1NiJ9..",
        "Bearer e30.e30.e30",
    ] {
        gw.expect_refused(with_authorization(value), Challenge::Invalid, value)
            .await;
    }
    // Bytes that are not visible ASCII.
    let binary = request(Method::GET, "/orders")
        .header(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xffabc.def.ghi").unwrap(),
        )
        .body(Full::default())
        .unwrap();
    gw.expect_refused(binary, Challenge::Invalid, "non-ASCII header")
        .await;
    // A valid token with a fourth segment appended.
    let extra = format!("{}.AAAA", hs256(&valid()));
    gw.refuse_token(&extra, "four segments").await;
    assert_eq!(gw.calls(), 0);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let gw = simple_gateway();
    let claims = valid();
    let hs = EncodingKey::from_secret(HMAC_SECRET);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        // No signature at all.
        gw.refuse_token(
            &unsigned(&header, &claims),
            &format!("alg {alg}, empty signature"),
        )
        .await;
        // With a signature made with the real HMAC secret over the same bytes.
        let message = unsigned(&header, &claims);
        let message = message.trim_end_matches('.');
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &hs, Algorithm::HS256).unwrap();
        gw.refuse_token(
            &format!("{message}.{signature}"),
            &format!("alg {alg}, HS256 signature"),
        )
        .await;
    }
    // A real alg with the signature stripped.
    let header = json!({"alg": "HS256", "typ": "JWT"});
    gw.refuse_token(&unsigned(&header, &claims), "HS256 without signature")
        .await;
    let stripped = hs256(&claims);
    let stripped = &stripped[..=stripped.rfind('.').unwrap()];
    gw.refuse_token(stripped, "real token, signature stripped")
        .await;
    // Sanity: the same claims, properly signed, pass.
    gw.expect_ok(bearer(&hs256(&claims)), "alice", "control")
        .await;
}

#[tokio::test]
async fn rsa_public_key_used_as_hmac_secret_is_refused() {
    let pem = keys().rsa.public_pem.clone();
    let secrets = [pem.as_bytes().to_vec(), pem.trim_end().as_bytes().to_vec()];

    // Layer configured with the RSA public key only.
    let rsa_only = Gateway::build(
        JwtAuthLayer::builder().issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(rsa_key())),
    );
    // Layer with both an HMAC secret and the RSA key, each with a kid.
    let mixed = Gateway::build(
        JwtAuthLayer::builder().issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(hs_key().kid("hs"))
                .key(rsa_key().kid("rs")),
        ),
    );
    for secret in &secrets {
        let forged_key = EncodingKey::from_secret(secret);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [None, Some("rs"), Some("hs")] {
                let forged = mint_with(&forged_key, alg, kid, &valid());
                rsa_only
                    .refuse_token(&forged, &format!("rsa-only, {alg:?} kid {kid:?}"))
                    .await;
                mixed
                    .refuse_token(&forged, &format!("mixed, {alg:?} kid {kid:?}"))
                    .await;
            }
        }
    }
    // An RS256 token (really signed with the RSA key) whose kid names the HMAC
    // key is refused: the key named by kid does not accept RS256.
    let rs_as_hs = mint(Algorithm::RS256, Some("hs"), &valid());
    mixed
        .refuse_token(&rs_as_hs, "RS256 naming the HMAC kid")
        .await;
    // An HS256 token with the real secret but naming the RSA kid.
    let hs_as_rs = mint(Algorithm::HS256, Some("rs"), &valid());
    mixed
        .refuse_token(&hs_as_rs, "HS256 naming the RSA kid")
        .await;
    // An ES256 token naming the RSA kid.
    let es_as_rs = mint(Algorithm::ES256, Some("rs"), &valid());
    mixed
        .refuse_token(&es_as_rs, "ES256 naming the RSA kid")
        .await;

    // Controls: the honest tokens pass on the same layers.
    rsa_only
        .expect_ok(
            bearer(&mint(Algorithm::RS256, None, &valid())),
            "alice",
            "rsa control",
        )
        .await;
    mixed
        .expect_ok(
            bearer(&mint(Algorithm::HS256, Some("hs"), &valid())),
            "alice",
            "hs control",
        )
        .await;
    mixed
        .expect_ok(
            bearer(&mint(Algorithm::RS256, Some("rs"), &valid())),
            "alice",
            "rs control",
        )
        .await;
}

#[tokio::test]
async fn time_claims_are_enforced() {
    let gw = simple_gateway(); // default leeway: 30 s
    let now = now();
    let expired = claims_with(|c| {
        c.insert("exp".into(), json!(now - 120));
    });
    let reply = gw
        .refuse_token(&hs256(&expired), "expired beyond leeway")
        .await;
    assert!(reply.json()["detail"].as_str().unwrap().contains("expired"));
    gw.refuse_token(&mint(Algorithm::RS256, None, &expired), "RS256 expired")
        .await;

    let future_nbf = claims_with(|c| {
        c.insert("nbf".into(), json!(now + 600));
    });
    gw.refuse_token(&hs256(&future_nbf), "nbf in the future")
        .await;

    let no_exp = claims_with(|c| {
        c.remove("exp");
    });
    gw.refuse_token(&hs256(&no_exp), "missing exp").await;

    for (what, exp) in [
        ("exp as string", json!((now + 600).to_string())),
        ("exp as bool", json!(true)),
        ("exp negative", json!(-5)),
        ("exp as object", json!({"n": now + 600})),
        ("exp null", Value::Null),
    ] {
        let c = claims_with(|c| {
            c.insert("exp".into(), exp);
        });
        gw.refuse_token(&hs256(&c), what).await;
    }
    let nbf_string = claims_with(|c| {
        c.insert("nbf".into(), json!("0"));
    });
    gw.refuse_token(&hs256(&nbf_string), "nbf as string").await;

    // Controls: within the leeway both ways.
    let recently_expired = claims_with(|c| {
        c.insert("exp".into(), json!(now - 5));
    });
    gw.expect_ok(
        bearer(&hs256(&recently_expired)),
        "alice",
        "exp within leeway",
    )
    .await;
    let nbf_soon = claims_with(|c| {
        c.insert("nbf".into(), json!(now + 5));
    });
    gw.expect_ok(bearer(&hs256(&nbf_soon)), "alice", "nbf within leeway")
        .await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced() {
    let gw = simple_gateway();
    let cases = [
        (
            "wrong iss",
            claims_with(|c| {
                c.insert("iss".into(), json!("https://evil.test"));
            }),
        ),
        (
            "iss with trailing slash",
            claims_with(|c| {
                c.insert("iss".into(), json!(format!("{ISSUER}/")));
            }),
        ),
        (
            "missing iss",
            claims_with(|c| {
                c.remove("iss");
            }),
        ),
        (
            "wrong aud",
            claims_with(|c| {
                c.insert("aud".into(), json!("billing-api"));
            }),
        ),
        (
            "aud array without ours",
            claims_with(|c| {
                c.insert("aud".into(), json!(["billing-api", "x"]));
            }),
        ),
        (
            "missing aud",
            claims_with(|c| {
                c.remove("aud");
            }),
        ),
        (
            "empty aud array",
            claims_with(|c| {
                c.insert("aud".into(), json!([]));
            }),
        ),
    ];
    for (what, c) in &cases {
        gw.refuse_token(&hs256(c), what).await;
        gw.refuse_token(&mint(Algorithm::RS256, None, c), &format!("RS256 {what}"))
            .await;
    }
    let aud_array = claims_with(|c| {
        c.insert("aud".into(), json!(["billing-api", AUDIENCE]));
    });
    gw.expect_ok(bearer(&hs256(&aud_array)), "alice", "aud array with ours")
        .await;
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let gw = Gateway::build(JwtAuthLayer::builder().issuer(all_families_issuer()));
    let escalated = claims_with(|c| {
        c.insert("roles".into(), json!(["admin"]));
        c.insert("sub".into(), json!("mallory"));
    });
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let token = mint(alg, Some(kid_for(alg)), &valid());
        gw.expect_ok(bearer(&token), "alice", &format!("{alg:?} original"))
            .await;
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(escalated.to_string().as_bytes()),
            parts[2]
        );
        gw.refuse_token(&tampered, &format!("{alg:?} tampered payload"))
            .await;
        // Same claims, different JSON bytes (whitespace): still a new payload.
        let reencoded = format!(
            "{}.{}.{}",
            parts[0],
            b64(serde_json::to_string_pretty(&valid()).unwrap().as_bytes()),
            parts[2]
        );
        gw.refuse_token(&reencoded, &format!("{alg:?} re-encoded payload"))
            .await;
        // A signature taken from another token of the same key.
        let other = mint(alg, Some(kid_for(alg)), &escalated);
        let spliced = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            other.rsplit('.').next().unwrap()
        );
        gw.refuse_token(&spliced, &format!("{alg:?} spliced signature"))
            .await;
    }
}

#[tokio::test]
async fn unknown_and_hostile_kids_are_refused() {
    let gw = Gateway::build(JwtAuthLayer::builder().issuer(all_families_issuer()));
    let long_kid = "k".repeat(300);
    for kid in [
        "unknown",
        "../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "/dev/null",
        "hs/../rs",
        "hs\u{0}",
        "HS",
        "",
        "' OR '1'='1",
        long_kid.as_str(),
    ] {
        // Signed with the real HMAC secret: only the kid is wrong.
        let token = mint(Algorithm::HS256, Some(kid), &valid());
        gw.refuse_token(&token, &format!("HS256 kid {kid:?}")).await;
        let token = mint(Algorithm::RS256, Some(kid), &valid());
        gw.refuse_token(&token, &format!("RS256 kid {kid:?}")).await;
    }
    // kid of a non-string type.
    let header = json!({"alg": "HS256", "kid": ["hs"]});
    let token = sign_raw(
        &header,
        valid().to_string().as_bytes(),
        &EncodingKey::from_secret(HMAC_SECRET),
        Algorithm::HS256,
    );
    gw.refuse_token(&token, "kid as array").await;
    gw.expect_ok(
        bearer(&mint(Algorithm::HS256, Some("hs"), &valid())),
        "alice",
        "control",
    )
    .await;
}

#[tokio::test]
async fn oversized_tokens_are_refused() {
    let gw = simple_gateway();
    // A 16 KiB Authorization header.
    let huge = "a".repeat(16 * 1024);
    gw.refuse_token(&huge, "16 KiB garbage").await;
    let huge_jwt = format!(
        "{}.{}.{}",
        "a".repeat(8 * 1024),
        "b".repeat(4096),
        "c".repeat(4096)
    );
    gw.refuse_token(&huge_jwt, "16 KiB three segments").await;
    // A real, validly signed token just over the 8 KiB default limit.
    let padded = claims_with(|c| {
        c.insert("pad".into(), json!("p".repeat(6200)));
    });
    let token = hs256(&padded);
    assert!(token.len() > 8 * 1024, "{}", token.len());
    gw.refuse_token(&token, "signed token over the limit").await;
    // The limit is configurable, and the same token then passes.
    let roomy = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .max_token_bytes(16 * 1024),
    );
    roomy
        .expect_ok(bearer(&token), "alice", "raised limit")
        .await;
}

#[tokio::test]
async fn smuggled_second_tokens_are_refused() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .cookie("access_token")
            .query_param("access_token"),
    );
    let good = hs256(&valid());
    let other = hs256(&claims("bob", &["admin"]));

    for (first, second) in [
        (format!("Bearer {good}"), "Bearer garbage".to_owned()),
        ("Bearer garbage".to_owned(), format!("Bearer {good}")),
        (format!("Bearer {good}"), format!("Bearer {other}")),
        (format!("Bearer {good}"), format!("Bearer {good}")),
        (
            format!("Bearer {good}"),
            "Basic YWxpY2U6c2VjcmV0".to_owned(),
        ),
    ] {
        let req = request(Method::GET, "/orders")
            .header(header::AUTHORIZATION, &first)
            .header(header::AUTHORIZATION, &second)
            .body(Full::default())
            .unwrap();
        gw.expect_refused(req, Challenge::Invalid, "two Authorization headers")
            .await;
    }
    // Header plus cookie, both valid.
    let req = request(Method::GET, "/orders")
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .header(header::COOKIE, format!("access_token={other}"))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "header + cookie")
        .await;
    // Header plus query parameter, both valid.
    let req = request(Method::GET, &format!("/orders?access_token={other}"))
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "header + query")
        .await;
    // Cookie plus query.
    let req = request(Method::GET, &format!("/orders?access_token={good}"))
        .header(header::COOKIE, format!("access_token={good}"))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "cookie + query")
        .await;
    // The cookie twice, in one header and in two.
    let req = request(Method::GET, "/orders")
        .header(
            header::COOKIE,
            format!("access_token={good}; access_token={other}"),
        )
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "cookie twice")
        .await;
    let req = request(Method::GET, "/orders")
        .header(header::COOKIE, format!("access_token={good}"))
        .header(header::COOKIE, format!("access_token={good}"))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "two cookie headers")
        .await;
    // The query parameter twice, once percent-encoded.
    let req = request(
        Method::GET,
        &format!("/orders?access_token={good}&access%5Ftoken={other}"),
    )
    .body(Full::default())
    .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "query parameter twice")
        .await;

    // Control: a header token alongside unrelated cookies and parameters passes.
    let req = request(Method::GET, "/orders?page=2&token=x")
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .header(header::COOKIE, "session=abc; theme=dark")
        .body(Full::default())
        .unwrap();
    gw.expect_ok(req, "alice", "one token").await;

    // Without the cookie source, a cookie next to the header is irrelevant.
    let header_only = simple_gateway();
    let req = request(Method::GET, "/orders?access_token=junk")
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .header(header::COOKIE, "access_token=junk")
        .body(Full::default())
        .unwrap();
    header_only
        .expect_ok(req, "alice", "other sources disabled")
        .await;
}

#[tokio::test]
async fn hostile_claims_shapes_are_refused() {
    let gw = simple_gateway();
    let key = EncodingKey::from_secret(HMAC_SECRET);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    // Validly signed payloads that are not JSON objects, or not JSON at all.
    for payload in [
        "[1,2]",
        "null",
        "\"alice\"",
        "42",
        "",
        "{",
        "{\"sub\":\"a\"}trailing",
    ] {
        let token = sign_raw(&header, payload.as_bytes(), &key, Algorithm::HS256);
        gw.refuse_token(&token, &format!("payload {payload:?}"))
            .await;
    }
    // Duplicate keys: the second `exp` (expired) must not be ignored.
    let dup = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"alice","exp":{},"exp":{}}}"#,
        now() + 600,
        now() - 600
    );
    let token = sign_raw(&header, dup.as_bytes(), &key, Algorithm::HS256);
    gw.refuse_token(&token, "duplicate exp").await;

    // Deeply nested JSON that still fits the 8 KiB token limit.
    let prefix = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"alice","exp":{},"n":"#,
        now() + 600
    );
    let depth = 2400;
    let deep = format!("{prefix}{}{}}}", "[".repeat(depth), "]".repeat(depth));
    let token = sign_raw(&header, deep.as_bytes(), &key, Algorithm::HS256);
    assert!(token.len() <= 8 * 1024, "{}", token.len());
    gw.refuse_token(&token, "deeply nested claims").await;
    // The same number of bytes, shallow, passes: the nesting was the problem.
    let wide = format!("{prefix}\"{}\"}}", "x".repeat(2 * depth - 2));
    assert_eq!(wide.len(), deep.len());
    let token = sign_raw(&header, wide.as_bytes(), &key, Algorithm::HS256);
    gw.expect_ok(bearer(&token), "alice", "large shallow claims")
        .await;
}

#[tokio::test]
async fn max_lifetime_and_required_claims_are_enforced() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .max_lifetime(Duration::from_secs(3600))
            .require_claim("tenant")
            .require_claim("org.id"),
    );
    let full = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        claims_with(|c| {
            c.insert("tenant".into(), json!("acme"));
            c.insert("org".into(), json!({"id": 7}));
            edit(c);
        })
    };
    gw.expect_ok(bearer(&hs256(&full(&|_| {}))), "alice", "control")
        .await;
    let now = now();
    let cases: [(&str, Value); 6] = [
        (
            "lifetime exceeded",
            full(&|c| {
                c.insert("exp".into(), json!(now + 7200));
            }),
        ),
        (
            "far-future exp",
            full(&|c| {
                c.insert("exp".into(), json!(u64::MAX));
            }),
        ),
        (
            "missing required claim",
            full(&|c| {
                c.remove("tenant");
            }),
        ),
        (
            "null required claim",
            full(&|c| {
                c.insert("tenant".into(), Value::Null);
            }),
        ),
        (
            "missing nested required claim",
            full(&|c| {
                c.insert("org".into(), json!({"name": "acme"}));
            }),
        ),
        (
            "nested claim under a non-object",
            full(&|c| {
                c.insert("org".into(), json!("acme"));
            }),
        ),
    ];
    for (what, c) in &cases {
        gw.refuse_token(&hs256(c), what).await;
    }
}

// ---------------------------------------------------------------------------
// Positive paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_algorithm_family_reaches_the_inner_service() {
    let gw = Gateway::build(JwtAuthLayer::builder().issuer(all_families_issuer()));
    for alg in ALL_ALGORITHMS {
        let c = claims(&format!("user-{alg:?}"), &["user", "ops"]);
        // With the kid, and without one (every key of the family is tried).
        for kid in [Some(kid_for(alg)), None] {
            let seen = gw
                .expect_ok(
                    bearer(&mint(alg, kid, &c)),
                    &format!("user-{alg:?}"),
                    &format!("{alg:?} kid {kid:?}"),
                )
                .await;
            assert_eq!(seen["roles"], json!(["user", "ops"]));
            assert_eq!(seen["iss"], ISSUER);
        }
    }
    // A signature by another key of the right family is refused.
    let rsa2 = EncodingKey::from_rsa_pem(keys().rsa2.private_pem.as_bytes()).unwrap();
    for alg in [Algorithm::RS256, Algorithm::PS512] {
        let token = mint_with(&rsa2, alg, Some("rs"), &valid());
        gw.refuse_token(&token, &format!("{alg:?} by a foreign key"))
            .await;
    }
    let other_hs = EncodingKey::from_secret(b"another-secret-0123456789abcdef0");
    gw.refuse_token(
        &mint_with(&other_hs, Algorithm::HS256, Some("hs"), &valid()),
        "HS256 by a foreign secret",
    )
    .await;
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let gw = simple_gateway();
    let token = hs256(&valid());
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        gw.expect_ok(
            with_authorization(&format!("{scheme} {token}")),
            "alice",
            scheme,
        )
        .await;
    }
    gw.expect_ok(
        with_authorization(&format!("Bearer   {token}")),
        "alice",
        "extra spaces",
    )
    .await;
}

#[tokio::test]
async fn cookie_and_query_sources_when_enabled() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .cookie("access_token")
            .query_param("token"),
    );
    let token = hs256(&valid());
    let req = request(Method::GET, "/orders")
        .header(
            header::COOKIE,
            format!("theme=dark; access_token={token}; lang=en"),
        )
        .body(Full::default())
        .unwrap();
    gw.expect_ok(req, "alice", "cookie").await;
    let req = request(Method::GET, "/orders")
        .header(header::COOKIE, format!("access_token=\"{token}\""))
        .body(Full::default())
        .unwrap();
    gw.expect_ok(req, "alice", "quoted cookie").await;
    let req = request(Method::GET, &format!("/orders?page=1&token={token}"))
        .body(Full::default())
        .unwrap();
    gw.expect_ok(req, "alice", "query").await;
    // The header still works.
    gw.expect_ok(bearer(&token), "alice", "header").await;

    // Invalid tokens from these sources are refused like header tokens.
    let req = request(Method::GET, "/orders")
        .header(header::COOKIE, "access_token=garbage")
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "garbage cookie")
        .await;
    let expired = hs256(&claims_with(|c| {
        c.insert("exp".into(), json!(now() - 3600));
    }));
    let req = request(Method::GET, &format!("/orders?token={expired}"))
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "expired query token")
        .await;
    let req = request(Method::GET, "/orders?token=")
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Invalid, "empty query token")
        .await;
}

#[tokio::test]
async fn allow_anonymous_passes_only_tokenless_requests() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .allow_anonymous(true)
            .forward_subject(HeaderName::from_static("x-user-id")),
    );
    // No token: through, without an identity, and a forged x-user-id is gone.
    let req = request(Method::GET, "/public")
        .header("x-user-id", "admin")
        .body(Full::default())
        .unwrap();
    let reply = gw.send(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(gw.calls(), 1);
    let seen = reply.json();
    assert_eq!(seen["identity"], false);
    assert_eq!(seen["x-user-id"], json!([]));

    // An invalid token is still refused; so are expired ones and smuggling.
    gw.refuse_token("garbage", "garbage").await;
    let expired = hs256(&claims_with(|c| {
        c.insert("exp".into(), json!(now() - 3600));
    }));
    gw.refuse_token(&expired, "expired").await;
    gw.expect_refused(with_authorization("Bearer "), Challenge::Invalid, "empty")
        .await;
    // A valid token still yields an identity.
    let seen = gw
        .expect_ok(bearer(&hs256(&valid())), "alice", "valid")
        .await;
    assert_eq!(seen["x-user-id"], json!(["alice"]));
    assert_eq!(gw.calls(), 2);
}

#[tokio::test]
async fn cors_preflight_passthrough() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .cors_preflight_passthrough(true)
            .forward_subject(HeaderName::from_static("x-user-id"))
            .forward_roles(HeaderName::from_static("x-user-roles")),
    );
    let preflight = request(Method::OPTIONS, "/orders")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ORIGIN, "https://app.test")
        .header("x-user-id", "admin")
        .header("x-user-roles", "admin")
        .body(Full::default())
        .unwrap();
    let reply = gw.send(preflight).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(gw.calls(), 1);
    let seen = reply.json();
    assert_eq!(seen["identity"], false);
    assert_eq!(seen["x-user-id"], json!([]));
    assert_eq!(seen["x-user-roles"], json!([]));

    // OPTIONS without Access-Control-Request-Method is not a preflight.
    let plain_options = request(Method::OPTIONS, "/orders")
        .body(Full::default())
        .unwrap();
    gw.expect_refused(plain_options, Challenge::Missing, "OPTIONS")
        .await;
    // Nor is another method carrying the header.
    let get_with_acrm = request(Method::GET, "/orders")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Full::default())
        .unwrap();
    gw.expect_refused(get_with_acrm, Challenge::Missing, "GET with ACRM")
        .await;

    // Without the option, a preflight needs a token like anything else.
    let strict = simple_gateway();
    let preflight = request(Method::OPTIONS, "/orders")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Full::default())
        .unwrap();
    strict
        .expect_refused(preflight, Challenge::Missing, "preflight, option off")
        .await;
}

#[tokio::test]
async fn forwarded_identity_headers_cannot_be_forged() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .forward_subject(HeaderName::from_static("x-user-id"))
            .forward_roles(HeaderName::from_static("x-user-roles")),
    );
    let token = hs256(&claims("alice", &["user", "ops"]));
    let req = request(Method::GET, "/orders")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-user-id", "admin")
        .header("x-user-id", "root")
        .header("X-User-Roles", "admin,superuser")
        .body(Full::default())
        .unwrap();
    let seen = gw.expect_ok(req, "alice", "forged headers").await;
    assert_eq!(seen["x-user-id"], json!(["alice"]));
    assert_eq!(seen["x-user-roles"], json!(["user,ops"]));

    // A token without `sub`: the forged header is removed, nothing replaces it.
    let no_sub = claims_with(|c| {
        c.remove("sub");
    });
    let req = request(Method::GET, "/orders")
        .header(header::AUTHORIZATION, format!("Bearer {}", hs256(&no_sub)))
        .header("x-user-id", "admin")
        .body(Full::default())
        .unwrap();
    let reply = gw.send(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["identity"], true);
    assert_eq!(seen["x-user-id"], json!([]));
    assert_eq!(seen["x-user-roles"], json!(["user"]));

    // A refused request with forged headers never reaches the upstream.
    let req = request(Method::GET, "/orders")
        .header("x-user-id", "admin")
        .body(Full::default())
        .unwrap();
    gw.expect_refused(req, Challenge::Missing, "forged header, no token")
        .await;
}

#[tokio::test]
async fn several_issuers_keep_their_keys_apart() {
    const OTHER: &str = "https://other.test";
    const OTHER_SECRET: &[u8] = b"other-issuer-secret-0123456789ab";
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .issuer(
                Issuer::new(OTHER)
                    .audience(AUDIENCE)
                    .key(JwtKey::hmac(OTHER_SECRET))
                    .key(rsa_key()),
            ),
    );
    let a_claims = valid();
    let b_claims = claims_with(|c| {
        c.insert("iss".into(), json!(OTHER));
        c.insert("sub".into(), json!("bob"));
    });
    let a_key = EncodingKey::from_secret(HMAC_SECRET);
    let b_key = EncodingKey::from_secret(OTHER_SECRET);

    let seen = gw
        .expect_ok(
            bearer(&mint_with(&a_key, Algorithm::HS256, None, &a_claims)),
            "alice",
            "A",
        )
        .await;
    assert_eq!(seen["iss"], ISSUER);
    let seen = gw
        .expect_ok(
            bearer(&mint_with(&b_key, Algorithm::HS256, None, &b_claims)),
            "bob",
            "B hs",
        )
        .await;
    assert_eq!(seen["iss"], OTHER);
    gw.expect_ok(
        bearer(&mint(Algorithm::RS256, None, &b_claims)),
        "bob",
        "B rs",
    )
    .await;

    // Issuer A's claims signed with issuer B's keys, and the reverse.
    gw.refuse_token(
        &mint_with(&b_key, Algorithm::HS256, None, &a_claims),
        "A claims, B secret",
    )
    .await;
    gw.refuse_token(
        &mint(Algorithm::RS256, None, &a_claims),
        "A claims, B RSA key",
    )
    .await;
    gw.refuse_token(
        &mint_with(&a_key, Algorithm::HS256, None, &b_claims),
        "B claims, A secret",
    )
    .await;
    // An iss no issuer is configured for, and no iss at all.
    let unknown = claims_with(|c| {
        c.insert("iss".into(), json!("https://evil.test"));
    });
    gw.refuse_token(
        &mint_with(&a_key, Algorithm::HS256, None, &unknown),
        "unknown iss",
    )
    .await;
    let no_iss = claims_with(|c| {
        c.remove("iss");
    });
    gw.refuse_token(
        &mint_with(&a_key, Algorithm::HS256, None, &no_iss),
        "no iss",
    )
    .await;
    // iss as an array naming both issuers.
    let both = claims_with(|c| {
        c.insert("iss".into(), json!([ISSUER, OTHER]));
    });
    gw.refuse_token(
        &mint_with(&b_key, Algorithm::HS256, None, &both),
        "iss array",
    )
    .await;
}

#[tokio::test]
async fn verified_token_cache_repeats_and_expires() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(rsa_key()))
            .leeway(Duration::ZERO),
    );
    // The same RS256 token verifies repeatedly with the same identity.
    let token = mint(Algorithm::RS256, None, &claims("alice", &["user"]));
    for i in 0..3 {
        let seen = gw
            .expect_ok(bearer(&token), "alice", &format!("repeat {i}"))
            .await;
        assert_eq!(seen["roles"], json!(["user"]));
    }
    // A tampered copy of a cached token is not served from the cache.
    // (A character in the middle of the signature: the last one may only
    // carry padding bits.)
    let at = token.len() - 20;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
    gw.refuse_token(&tampered, "cached token, signature changed")
        .await;

    // A token that expires in a second: accepted now (and cached), refused
    // once the clock passes `exp` (leeway is zero).
    let exp = now() + 1;
    let short = mint(
        Algorithm::RS256,
        None,
        &claims_with(|c| {
            c.insert("exp".into(), json!(exp));
        }),
    );
    gw.expect_ok(bearer(&short), "alice", "short-lived, fresh")
        .await;
    gw.expect_ok(bearer(&short), "alice", "short-lived, cached")
        .await;
    // Wait for the wall clock (bounded), not for an arbitrary time.
    let deadline = Instant::now() + Duration::from_secs(4);
    while now() <= exp {
        assert!(Instant::now() < deadline, "clock did not advance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = gw.refuse_token(&short, "cached but expired").await;
    assert!(reply.json()["detail"].as_str().unwrap().contains("expired"));
    // The long-lived token is unaffected.
    gw.expect_ok(bearer(&token), "alice", "long-lived after")
        .await;
}

// ---------------------------------------------------------------------------
// Failure budget and identity-header spellings.
// ---------------------------------------------------------------------------

/// Refusals by reason, as the auth metrics count them.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Reasons(tower_gateway::metrics::GatewayMetrics);

#[cfg(feature = "metrics")]
impl Reasons {
    fn count(&self, reason: &str) -> usize {
        let series = format!(r#"gateway_auth_failures_total{{reason="{reason}"}} "#);
        self.0
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0)
    }
}

fn from(addr: &str, mut req: Req) -> Req {
    req.extensions_mut()
        .insert(tower_gateway::connection::ClientAddr(addr.parse().unwrap()));
    req
}

/// Valid claims, signed with a secret the gateway does not know.
fn forged_hs256() -> String {
    let key = EncodingKey::from_secret(b"not-the-gateway-secret-012345678");
    mint_with(&key, Algorithm::HS256, None, &valid())
}

fn assert_budget_refusal(reply: &Reply, retry_after: &str, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        reply.text()
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], retry_after, "{what}");
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    assert_eq!(reply.json()["code"], "auth_failure_budget", "{what}");
    assert!(
        !reply.headers.contains_key(header::WWW_AUTHENTICATE),
        "{what}"
    );
}

/// After N failed tokens from one address, its token-carrying requests are
/// 429 (even a valid token: nothing is verified) until the window closes;
/// other addresses, tokenless requests and requests without a `ClientAddr`
/// are unaffected, and the refusals are reported as `auth_failure_budget`.
#[tokio::test(start_paused = true)]
async fn failure_budget_refuses_an_address_before_verifying() {
    let builder = JwtAuthLayer::builder()
        .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
        .failure_budget(tower_gateway::auth::FailureBudget::new(
            3,
            Duration::from_secs(10),
        ));
    #[cfg(feature = "metrics")]
    let reasons = Reasons::default();
    #[cfg(feature = "metrics")]
    let builder = builder.metrics(tower_gateway::auth::AuthMetrics::new(&reasons.0));
    let gw = Gateway::build(builder);
    let good = hs256(&valid());
    let forged = forged_hs256();
    let attacker = "192.0.2.66:40000";

    for i in 0..3 {
        let what = format!("forged #{i}");
        let reply = gw.send(from(attacker, bearer(&forged))).await;
        assert_rejection(&reply, Challenge::Invalid, &what);
    }
    tokio::time::advance(Duration::from_millis(2500)).await;
    let reply = gw.send(from(attacker, bearer(&good))).await;
    assert_budget_refusal(&reply, "8", "valid token from a spent address");
    let reply = gw
        .send(from(attacker, with_authorization("Bearer a b")))
        .await;
    assert_budget_refusal(&reply, "8", "malformed token from a spent address");
    assert_eq!(gw.calls(), 0);

    // A tokenless request is not budgeted: it costs no verification.
    gw.expect_refused(from(attacker, get()), Challenge::Missing, "no token")
        .await;
    // Another address (another port does not help) and a request the
    // server put no address on are served.
    gw.expect_ok(from("192.0.2.67:1", bearer(&good)), "alice", "neighbour")
        .await;
    gw.expect_ok(bearer(&good), "alice", "no ClientAddr").await;

    tokio::time::advance(Duration::from_millis(7500)).await;
    gw.expect_ok(
        from("192.0.2.66:40001", bearer(&good)),
        "alice",
        "window over",
    )
    .await;
    #[cfg(feature = "metrics")]
    {
        assert_eq!(reasons.count("auth_failure_budget"), 2);
        assert_eq!(reasons.count("invalid_signature"), 3);
    }
}

/// The budget is off unless configured.
#[tokio::test]
async fn failure_budget_is_off_by_default() {
    let gw = Gateway::build(
        JwtAuthLayer::builder().issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key())),
    );
    let good = hs256(&valid());
    let forged = forged_hs256();
    for i in 0..50 {
        gw.expect_refused(
            from("192.0.2.66:1", bearer(&forged)),
            Challenge::Invalid,
            &format!("forged #{i}"),
        )
        .await;
    }
    gw.expect_ok(from("192.0.2.66:1", bearer(&good)), "alice", "valid")
        .await;
}

/// CGI-style servers read `X_User_Id` as `X-User-Id`: every spelling that
/// swaps `-` and `_` of a forwarded or stripped header is removed, with or
/// without a token, and unrelated underscore headers stay.
#[tokio::test]
async fn underscore_spellings_of_identity_headers_are_stripped() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .allow_anonymous(true)
            .forward_subject(HeaderName::from_static("x-user-id"))
            .forward_roles(HeaderName::from_static("x-user-roles"))
            .strip_header(HeaderName::from_static("x_tenant")),
    );
    // The echo reports these too.
    let spoof = |req: http::request::Builder| {
        req.header("X_User_Id", "admin")
            .header("x-user_id", "admin")
            .header("X_USER-ROLES", "admin")
            .header("x-tenant", "other")
            .header("x_tenant", "other")
            .header("x_request_id", "keep-me")
    };
    let seen_of = |reply: &Reply| reply.json();
    let token = hs256(&valid());
    for (what, req) in [
        (
            "with token",
            spoof(request(Method::GET, "/orders"))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Full::default())
                .unwrap(),
        ),
        (
            "anonymous",
            spoof(request(Method::GET, "/orders"))
                .body(Full::default())
                .unwrap(),
        ),
    ] {
        let reply = gw.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        let seen = seen_of(&reply);
        let names: Vec<&str> = seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for gone in [
            "x_user_id",
            "x-user_id",
            "x_user-roles",
            "x-tenant",
            "x_tenant",
        ] {
            assert!(
                !names.contains(&gone),
                "{what}: {gone} reached the upstream"
            );
        }
        assert!(names.contains(&"x_request_id"), "{what}: {names:?}");
    }
}

/// Under a strict role source, a role claim that is not an array of
/// strings is a 403 with its own code — never split, never ignored — while
/// an array of strings, or no claim at all, passes.
#[tokio::test]
async fn strict_roles_refuse_role_claims_of_other_shapes() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(
                Issuer::new(ISSUER)
                    .audience(AUDIENCE)
                    .key(JwtKey::hmac(HMAC_SECRET)),
            )
            .roles(tower_gateway::identity::RoleSource::claim("roles").strict()),
    );
    let with_roles = |roles: Value| {
        let mut claims = claims("alice", &[]);
        claims["roles"] = roles;
        mint(Algorithm::HS256, None, &claims)
    };
    let seen = gw
        .expect_ok(
            bearer(&with_roles(json!(["user", "admin"]))),
            "alice",
            "array",
        )
        .await;
    assert_eq!(seen["roles"], json!(["user", "admin"]));
    let mut claims_without = claims("alice", &[]);
    claims_without.as_object_mut().unwrap().remove("roles");
    let seen = gw
        .expect_ok(
            bearer(&mint(Algorithm::HS256, None, &claims_without)),
            "alice",
            "no roles claim",
        )
        .await;
    assert_eq!(seen["roles"], json!([]));
    let before = gw.calls();
    for (shape, roles) in [
        ("string", json!("user admin")),
        ("number", json!(7)),
        ("object", json!({"admin": true})),
        ("mixed array", json!(["user", 1])),
        ("nested array", json!([["admin"]])),
    ] {
        let reply = gw.send(bearer(&with_roles(roles))).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{shape}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["code"], "invalid_roles_claim", "{shape}");
    }
    assert_eq!(
        gw.calls(),
        before,
        "a malformed role claim reached the service"
    );
}

/// With a tarpit, the 429 of a spent budget is held for the delay: a
/// flooder's connection gets one answer per delay.
#[tokio::test(start_paused = true)]
async fn a_spent_budget_answers_after_the_tarpit_delay() {
    let gw = Gateway::build(
        JwtAuthLayer::builder()
            .issuer(Issuer::new(ISSUER).audience(AUDIENCE).key(hs_key()))
            .failure_budget(
                tower_gateway::auth::FailureBudget::new(2, Duration::from_secs(60))
                    .tarpit(Duration::from_secs(1)),
            ),
    );
    let forged = forged_hs256();
    let attacker = "192.0.2.66:40000";
    for i in 0..2 {
        let started = tokio::time::Instant::now();
        let reply = gw.send(from(attacker, bearer(&forged))).await;
        assert_rejection(&reply, Challenge::Invalid, &format!("forged #{i}"));
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "an ordinary 401 was held"
        );
    }
    let started = tokio::time::Instant::now();
    let reply = gw.send(from(attacker, bearer(&forged))).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the 429 was not held: {:?}",
        started.elapsed()
    );
    assert_eq!(gw.calls(), 0);
}
