//! Security review regressions for `JwtAuthLayer`, `RbacLayer` and the
//! identity headers: each test pins a defect that an attacker could trigger
//! from outside (token smuggling past `allow_anonymous`, identity-header
//! injection through claim values, a method spelling that skipped its rule,
//! `exp` read two ways).
#![cfg(all(feature = "jwt", feature = "rbac"))]
mod support;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;
use tower::{Layer, ServiceExt};
use tower_gateway::{
    auth::{Issuer, JwtAuthBuilder, JwtAuthLayer, JwtKey},
    identity::{Identity, RoleSource},
    rbac::{Policy, RbacLayer, Rule},
};

type Req = Request<Full<Bytes>>;

/// What the inner service saw: whether it was reached with an identity, and
/// the forwarded identity headers exactly as they would go on the wire.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    reached: bool,
    identity: Option<String>,
    user_id: Vec<String>,
    user_roles: Vec<String>,
    www_authenticate: Option<String>,
}

fn builder() -> JwtAuthBuilder {
    JwtAuthLayer::builder().issuer(
        Issuer::new(ISSUER)
            .audience(AUDIENCE)
            .key(JwtKey::hmac(HMAC_SECRET)),
    )
}

async fn send(layer: &JwtAuthLayer, request: Req) -> Seen {
    let inner = tower::service_fn(|req: Req| async move {
        let all = |name: &str| {
            req.headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
        };
        let seen = json!({
            "identity": req.extensions().get::<Identity>().map(|i| i.subject().unwrap_or("").to_owned()),
            "x-user-id": all("x-user-id"),
            "x-user-roles": all("x-user-roles"),
        });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
    });
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    let status = response.status();
    let www_authenticate = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status != StatusCode::OK {
        return Seen {
            status,
            reached: false,
            identity: None,
            user_id: Vec::new(),
            user_roles: Vec::new(),
            www_authenticate,
        };
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    Seen {
        status,
        reached: true,
        identity: v["identity"].as_str().map(str::to_owned),
        user_id: strings(&v["x-user-id"]),
        user_roles: strings(&v["x-user-roles"]),
        www_authenticate,
    }
}

fn get(uri: &str) -> http::request::Builder {
    Request::builder().method(Method::GET).uri(uri)
}

fn token(claims: &Value) -> String {
    mint(Algorithm::HS256, None, claims)
}

fn assert_invalid_token(seen: &Seen, what: &str) {
    assert_eq!(seen.status, StatusCode::UNAUTHORIZED, "{what}: {seen:?}");
    assert!(!seen.reached, "{what}");
    let challenge = seen.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{what}: {challenge}"
    );
}

// ---------------------------------------------------------------------------
// Token smuggling past `allow_anonymous`
// ---------------------------------------------------------------------------

/// `Authorization: Bearer<TAB><token>` was read as "some other scheme", so a
/// gateway with `allow_anonymous` let the request through as anonymous with
/// the token still attached — for the upstream (which commonly splits on any
/// whitespace) to read a token the gateway never verified.
#[tokio::test]
async fn bearer_scheme_followed_by_a_tab_is_not_anonymous() {
    let layer = builder().allow_anonymous(true).build().unwrap();
    let expired = token(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now() - 3600,
    }));
    for value in [
        format!("Bearer\t{expired}"),
        format!("bearer\t\t{expired}"),
        format!("Bearer \t{expired}"),
        "Bearer\tgarbage".to_owned(),
    ] {
        let request = get("/orders")
            .header(header::AUTHORIZATION, &value)
            .body(Full::default())
            .unwrap();
        assert_invalid_token(&send(&layer, request).await, &value);
    }
    // Control: another scheme is still "no bearer token".
    let request = get("/orders")
        .header(header::AUTHORIZATION, "Basic YWxpY2U6c2VjcmV0")
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert!(seen.reached && seen.identity.is_none(), "{seen:?}");
}

/// `Cookie: access_token =<token>` (whitespace around `=`) was skipped, so
/// the request passed as anonymous while servers that trim cookie names (Go's
/// net/http, many frameworks) read the cookie as the token.
#[tokio::test]
async fn cookie_names_are_matched_after_trimming_like_servers_do() {
    let layer = builder()
        .cookie("access_token")
        .allow_anonymous(true)
        .build()
        .unwrap();
    for cookie in [
        "access_token =garbage",
        "theme=dark; access_token\t=garbage",
        "access_token = garbage",
    ] {
        let request = get("/orders")
            .header(header::COOKIE, cookie)
            .body(Full::default())
            .unwrap();
        assert_invalid_token(&send(&layer, request).await, cookie);
    }
    // A valid token under the trimmed name verifies, and a second spelling
    // of the same cookie is smuggling.
    let good = token(&claims("alice", &["user"]));
    let request = get("/orders")
        .header(header::COOKIE, format!("access_token ={good}"))
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert_eq!(seen.identity.as_deref(), Some("alice"), "{seen:?}");
    let request = get("/orders")
        .header(
            header::COOKIE,
            format!("access_token={good}; access_token ={good}"),
        )
        .body(Full::default())
        .unwrap();
    assert_invalid_token(&send(&layer, request).await, "two spellings");
}

/// `?x=1;access_token=<token>`: servers that still split queries on `;`
/// (Python's `parse_qs` before 3.9.2, Bottle, Tornado) read the token the
/// gateway did not see.
#[tokio::test]
async fn semicolon_separated_query_parameters_are_seen() {
    let layer = builder()
        .query_param("access_token")
        .allow_anonymous(true)
        .build()
        .unwrap();
    for uri in [
        "/orders?x=1;access_token=garbage",
        "/orders?access_token=garbage;x=1",
    ] {
        let request = get(uri).body(Full::default()).unwrap();
        assert_invalid_token(&send(&layer, request).await, uri);
    }
    let good = token(&claims("alice", &["user"]));
    let request = get(&format!("/orders?page=1;access_token={good}"))
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert_eq!(seen.identity.as_deref(), Some("alice"), "{seen:?}");
    let request = get(&format!("/orders?access_token={good};access_token={good}"))
        .body(Full::default())
        .unwrap();
    assert_invalid_token(&send(&layer, request).await, "twice, ; separated");
}

/// With the cookie source on, any `Cookie` header that was not pure ASCII
/// refused the whole request — even one carrying a valid `Authorization`
/// token, whatever the offending cookie was. Browsers send raw UTF-8 cookie
/// values (`document.cookie = "lang=é"`), and a sibling subdomain can set
/// one for the parent domain (cookie tossing) to lock a user out.
#[tokio::test]
async fn an_unrelated_non_ascii_cookie_does_not_lock_the_client_out() {
    let layer = builder().cookie("access_token").build().unwrap();
    let good = token(&claims("alice", &["user"]));
    let utf8_cookie = http::HeaderValue::from_bytes("lang=é; theme=dark".as_bytes()).unwrap();
    let request = get("/orders")
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .header(header::COOKIE, utf8_cookie.clone())
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert_eq!(seen.identity.as_deref(), Some("alice"), "{seen:?}");
    // The token cookie itself next to it is still found (and verified).
    let with_token =
        http::HeaderValue::from_bytes(format!("lang=é; access_token={good}").as_bytes()).unwrap();
    let request = get("/orders")
        .header(header::COOKIE, with_token)
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert_eq!(seen.identity.as_deref(), Some("alice"), "{seen:?}");
    // A non-ASCII value of the token cookie is malformed, as before.
    let bad = http::HeaderValue::from_bytes("access_token=é".as_bytes()).unwrap();
    let request = get("/orders")
        .header(header::COOKIE, bad)
        .body(Full::default())
        .unwrap();
    assert_invalid_token(&send(&layer, request).await, "non-ASCII token cookie");
}

// ---------------------------------------------------------------------------
// Token headers
// ---------------------------------------------------------------------------

/// RFC 7515 §4.1.11: a JWS whose `crit` names extensions the recipient does
/// not understand MUST be rejected. They were ignored, so a token whose
/// issuer marked, say, `b64: false` (RFC 7797) or its own policy claim as
/// critical was accepted with that meaning dropped.
#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let layer = builder().build().unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET);
    let payload = claims("alice", &["user"]).to_string();
    for header in [
        json!({"alg": "HS256", "crit": ["exp"]}),
        json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
        json!({"alg": "HS256", "crit": ["https://example.com/policy"]}),
        json!({"alg": "HS256", "crit": []}),
    ] {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        let token = format!("{message}.{signature}");
        assert!(layer.verify(&token).is_err(), "{header}");
    }
}

// ---------------------------------------------------------------------------
// Forwarded identity headers
// ---------------------------------------------------------------------------

fn forwarding() -> JwtAuthLayer {
    builder()
        .forward_subject(HeaderName::from_static("x-user-id"))
        .forward_roles(HeaderName::from_static("x-user-roles"))
        .build()
        .unwrap()
}

/// The upstream reads `x-user-roles` as a comma-separated list with optional
/// whitespace (RFC 9110 §5.6.1). A role *value* holding a comma, or padded
/// with whitespace, became a different role there: `["viewer,admin"]`
/// reached the upstream as `viewer` and `admin` although RBAC at the gateway
/// (rightly) saw neither.
#[tokio::test]
async fn a_role_value_cannot_become_other_roles_upstream() {
    let layer = forwarding();
    let c = claims_with_roles(json!(["user", "viewer,admin", " admin", "ops\t", "a, b"]));
    let request = get("/orders")
        .header(header::AUTHORIZATION, format!("Bearer {}", token(&c)))
        .body(Full::default())
        .unwrap();
    let seen = send(&layer, request).await;
    assert_eq!(seen.identity.as_deref(), Some("alice"), "{seen:?}");
    assert_eq!(seen.user_roles, ["user"], "{seen:?}");
    let upstream_roles: Vec<&str> = seen.user_roles[0].split(',').map(str::trim).collect();
    assert!(!upstream_roles.contains(&"admin"), "{upstream_roles:?}");
}

/// HTTP strips leading and trailing whitespace from field values, so a
/// `sub` of `" admin"` or `"admin "` arrived upstream as `admin`: any user
/// who can choose such a subject at the auth server impersonated `admin` to
/// every upstream that trusts `x-user-id`.
#[tokio::test]
async fn a_padded_subject_is_not_forwarded_as_another_user() {
    let layer = forwarding();
    for sub in [" admin", "admin ", "\tadmin", "admin\t"] {
        let mut c = claims(sub, &["user"]);
        c["sub"] = json!(sub);
        let request = get("/orders")
            .header(header::AUTHORIZATION, format!("Bearer {}", token(&c)))
            .header("x-user-id", "admin")
            .body(Full::default())
            .unwrap();
        let seen = send(&layer, request).await;
        assert!(seen.reached, "{sub:?}: {seen:?}");
        assert_eq!(seen.identity.as_deref(), Some(sub));
        assert!(seen.user_id.is_empty(), "{sub:?}: {:?}", seen.user_id);
    }
    // Control: an ordinary subject is forwarded.
    let request = get("/orders")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", token(&claims("alice", &["user"]))),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&layer, request).await.user_id, ["alice"]);
}

fn claims_with_roles(roles: Value) -> Value {
    let mut c = claims("alice", &[]);
    c["roles"] = roles;
    c
}

// ---------------------------------------------------------------------------
// `exp` read the same way everywhere
// ---------------------------------------------------------------------------

/// RFC 7519 NumericDate may be fractional, and the signature/claims check
/// (jsonwebtoken) accepts `exp: 1767225600.5`. The lifetime check and
/// `Identity::expires_at` only read integers, so such a token was refused as
/// "exp missing" under `max_lifetime`, and otherwise admitted with
/// `expires_at() == None` — "never expires" for anyone who trusts it.
#[tokio::test]
async fn fractional_exp_is_read_like_an_integer_exp() {
    let exp = now() + 600;
    let fractional = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": exp as f64 + 0.25,
    });
    let plain = builder().build().unwrap();
    let identity = plain.verify(&token(&fractional)).expect("fractional exp");
    assert_eq!(identity.expires_at(), Some(exp));

    let bounded = builder()
        .max_lifetime(Duration::from_secs(3600))
        .build()
        .unwrap();
    let identity = bounded
        .verify(&token(&fractional))
        .expect("fractional exp within the maximum lifetime");
    assert_eq!(identity.expires_at(), Some(exp));
    // Beyond the maximum lifetime, as a float, still refused.
    let far = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": (now() + 7200) as f64 + 0.5,
    });
    assert!(bounded.verify(&token(&far)).is_err());
    // Floats jsonwebtoken refuses stay refused.
    for exp in [json!(1e300), json!(-1.5), json!(f64::MAX)] {
        let c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": exp});
        assert!(plain.verify(&token(&c)).is_err(), "{exp}");
        assert!(bounded.verify(&token(&c)).is_err(), "{exp}");
    }
}

// ---------------------------------------------------------------------------
// RBAC: method spellings
// ---------------------------------------------------------------------------

/// Methods are case-sensitive on the wire, and hyper passes `get` through as
/// an extension method, which matched no `GET` rule and so fell through to
/// "unmatched" (allowed by default). Django and Werkzeug/Flask upper-case
/// the method, so `get /admin` ran the admin-only GET handler for anyone.
#[tokio::test]
async fn lowercase_methods_meet_the_rules_of_their_uppercase_form() {
    let policy = Policy::builder()
        .rule(Rule::new("/admin").methods([Method::GET]).any_of(["admin"]))
        .rule(
            Rule::new("/orders")
                .methods([Method::POST])
                .any_of(["user"]),
        )
        .build()
        .unwrap();
    let layer = RbacLayer::new(policy);
    let user = Identity::from_claims(
        json!({"sub": "u", "roles": ["viewer"]})
            .as_object()
            .cloned()
            .unwrap(),
        &RoleSource::default(),
    );
    for (method, path) in [
        ("get", "/admin"),
        ("Get", "/admin"),
        ("head", "/admin"),
        ("post", "/orders"),
    ] {
        for identity in [None, Some(user.clone())] {
            let mut request = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(path)
                .body(String::new())
                .unwrap();
            let expect = if identity.is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            let inner = tower::service_fn(|_req: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            });
            let response = layer.layer(inner).oneshot(request).await.unwrap();
            assert_eq!(response.status(), expect, "{method} {path}");
        }
    }
}
