//! `RbacLayer` as a service, table-driven: what each caller gets for each
//! method and path, what reached the upstream (the exact, normalized path),
//! and that no spelling of a path gets a caller past a rule.
#![cfg(all(feature = "jwt", feature = "rbac"))]
mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_gateway::{
    auth::{Issuer, JwtAuthLayer, JwtKey},
    identity::{ClaimPath, Identity, RoleSource},
    path::NormalizePathLayer,
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
};

/// Every request the upstream received, as `METHOD path?query`.
type Seen = Arc<Mutex<Vec<String>>>;

/// The upstream: records what it received and answers 200 with its
/// path-and-query.
#[derive(Clone)]
struct Upstream(Seen);

fn upstream(seen: Seen) -> Upstream {
    Upstream(seen)
}

impl Service<Request<String>> for Upstream {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let target = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |pq| pq.as_str().to_owned(),
        );
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method(), target));
        std::future::ready(Ok(Response::new(target)))
    }
}

/// Who sends a request.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// No identity in the request at all.
    Nobody,
    /// A verified identity with these roles (in the default `roles` claim).
    Roles(&'static [&'static str]),
}

fn identity_from(claims: Value) -> Identity {
    Identity::from_claims(claims.as_object().cloned().unwrap(), &RoleSource::default())
}

fn identity(roles: &[&str]) -> Identity {
    identity_from(json!({ "sub": "tester", "roles": roles }))
}

/// What came back, and what reached the upstream.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    reached: Vec<String>,
}

impl Outcome {
    fn problem(&self) -> Value {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends one request, carrying `identity` in its extensions (as an
/// authenticating layer would have put it there), through `layer` in front of
/// a fresh upstream.
async fn send_as(
    layer: &RbacLayer,
    method: Method,
    uri: &str,
    identity: Option<Identity>,
) -> Outcome {
    let seen = Seen::default();
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap();
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
    }
    let response = tower_gateway::reject::RenderLayer::new()
        .layer(layer.layer(upstream(seen.clone())))
        .oneshot(request)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let reached = seen.lock().unwrap().clone();
    Outcome {
        status: parts.status,
        headers: parts.headers,
        body,
        reached,
    }
}

async fn send(layer: &RbacLayer, method: Method, uri: &str, who: Who) -> Outcome {
    let identity = match who {
        Who::Nobody => None,
        Who::Roles(roles) => Some(identity(roles)),
    };
    send_as(layer, method, uri, identity).await
}

/// Checks one outcome: the status, the rejection's shape, and exactly what the
/// upstream received (`reached` is the path-and-query it must see, or `None`
/// when nothing may reach it).
fn check(case: &str, outcome: &Outcome, status: StatusCode, reached: Option<&str>) {
    assert_eq!(outcome.status, status, "{case}: {outcome:?}");
    match reached {
        Some(target) => {
            assert_eq!(outcome.reached.len(), 1, "{case}: {outcome:?}");
            assert!(
                outcome.reached[0].ends_with(&format!(" {target}")),
                "{case}: upstream saw {:?}, want {target:?}",
                outcome.reached
            );
            assert_eq!(outcome.body, target.as_bytes(), "{case}");
        }
        None => {
            assert!(
                outcome.reached.is_empty(),
                "{case}: reached the upstream: {outcome:?}"
            );
            let problem = outcome.problem();
            assert_eq!(problem["status"], status.as_u16(), "{case}");
            let code = match status {
                StatusCode::BAD_REQUEST => "invalid_path",
                StatusCode::UNAUTHORIZED => "missing_token",
                StatusCode::FORBIDDEN => "insufficient_role",
                other => panic!("{case}: unexpected status {other}"),
            };
            assert_eq!(problem["code"], code, "{case}: {problem}");
            if status == StatusCode::UNAUTHORIZED {
                // RFC 6750 §3.1: no credentials, so no error code in the challenge.
                assert_eq!(
                    outcome.headers[header::WWW_AUTHENTICATE],
                    "Bearer",
                    "{case}"
                );
            } else {
                assert!(
                    !outcome.headers.contains_key(header::WWW_AUTHENTICATE),
                    "{case}"
                );
            }
        }
    }
}

/// The seed's Order service, as a gateway policy: `GET /orders` is admin
/// only, `POST /orders` is for users (and admins, through the hierarchy — the
/// seed's `decoded.role !== requiredRole` refuses them), one order is readable
/// by users, `/public` is open, anything else is refused.
fn orders_policy(case_insensitive: bool) -> Policy {
    Policy::builder()
        .rule(Rule::new("/public").public())
        .rule(
            Rule::exact("/orders/{id}")
                .methods([Method::GET])
                .any_of(["user"]),
        )
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
        .deny_unmatched(true)
        .case_insensitive(case_insensitive)
        .build()
        .unwrap()
}

fn orders_layer(case_insensitive: bool) -> RbacLayer {
    RbacLayer::new(orders_policy(case_insensitive))
        .hierarchy(RoleHierarchy::new().inherit("admin", ["user"]))
}

const NOBODY: Who = Who::Nobody;
const USER: Who = Who::Roles(&["user"]);
const ADMIN: Who = Who::Roles(&["admin"]);
const VIEWER: Who = Who::Roles(&["viewer"]);

type Case = (Method, &'static str, Who, StatusCode, Option<&'static str>);

async fn run_table(layer: &RbacLayer, cases: Vec<Case>) {
    for (method, uri, who, status, reached) in cases {
        let case = format!("{method} {uri} as {who:?}");
        let outcome = send(layer, method, uri, who).await;
        check(&case, &outcome, status, reached);
    }
}

const OK: StatusCode = StatusCode::OK;
const E400: StatusCode = StatusCode::BAD_REQUEST;
const E401: StatusCode = StatusCode::UNAUTHORIZED;
const E403: StatusCode = StatusCode::FORBIDDEN;

#[tokio::test]
async fn orders_policy_decides_per_method_path_and_role() {
    use Method as M;
    let layer = orders_layer(false);
    run_table(
        &layer,
        vec![
            (M::GET, "/orders", ADMIN, OK, Some("/orders")),
            (M::GET, "/orders", USER, E403, None),
            (M::GET, "/orders", NOBODY, E401, None),
            (
                M::GET,
                "/orders?page=2&sort=desc",
                ADMIN,
                OK,
                Some("/orders?page=2&sort=desc"),
            ),
            (M::POST, "/orders", USER, OK, Some("/orders")),
            // admin implies user: the seed's exact-match check wrongly refuses this.
            (M::POST, "/orders", ADMIN, OK, Some("/orders")),
            (M::POST, "/orders", VIEWER, E403, None),
            (M::POST, "/orders", NOBODY, E401, None),
            // `/orders/{id}` is exact: one segment, readable by users.
            (M::GET, "/orders/7", USER, OK, Some("/orders/7")),
            (M::GET, "/orders/7", ADMIN, OK, Some("/orders/7")),
            (M::GET, "/orders/7", VIEWER, E403, None),
            (M::GET, "/orders/7/items", USER, E403, None),
            (
                M::GET,
                "/orders/7/items",
                ADMIN,
                OK,
                Some("/orders/7/items"),
            ),
            (M::GET, "/ordersX", ADMIN, E403, None),
            // public needs no identity, and its query survives untouched.
            (M::GET, "/public", NOBODY, OK, Some("/public")),
            (
                M::GET,
                "/public/docs?q=a%2Fb",
                NOBODY,
                OK,
                Some("/public/docs?q=a%2Fb"),
            ),
            (M::DELETE, "/public/x", USER, OK, Some("/public/x")),
            // Unmatched: no identity → 401, any identity → 403 (even admin).
            (M::GET, "/admin", NOBODY, E401, None),
            (M::GET, "/admin", ADMIN, E403, None),
            (M::DELETE, "/orders", ADMIN, E403, None),
            (M::PUT, "/orders/7", USER, E403, None),
            // HEAD runs the GET handler in axum and Express: it is guarded by
            // the GET rule.
            (M::HEAD, "/orders", USER, E403, None),
            (M::HEAD, "/orders", ADMIN, OK, Some("/orders")),
        ],
    )
    .await;
}

#[tokio::test]
async fn path_tricks_never_reach_the_upstream_unauthorized() {
    use Method as M;
    let layer = orders_layer(false);
    let mut cases: Vec<Case> = Vec::new();
    // Spellings of `/orders` (GET: admin only): decided as `/orders`, and the
    // upstream receives `/orders`.
    for uri in [
        "/orders/../orders",
        "//orders",
        "/%6frders",
        "/%6Frders",
        "/public/%2e%2e/orders",
        "/public/%2E%2E/orders",
        "/public/.%2e/orders",
        "/public/../orders",
        "/./orders",
        "/public/x/../../orders",
        "/../../orders",
        "///orders",
    ] {
        cases.push((M::GET, uri, NOBODY, E401, None));
        cases.push((M::GET, uri, USER, E403, None));
        cases.push((M::GET, uri, ADMIN, OK, Some("/orders")));
    }
    // Encodings that servers read differently: refused with 400 for
    // everyone, admin included, never passed on.
    for uri in [
        "/public/..%2forders",
        "/public/..%2Forders",
        "/orders;x",
        "/public;/../orders",
        "/orders%2f7",
        "/orders%2F7",
        "/orders%5c7",
        "/public/..%5corders",
        "/orders%00",
        "/orders%",
        "/orders%zz",
    ] {
        for who in [NOBODY, USER, ADMIN] {
            cases.push((M::GET, uri, who, E400, None));
        }
    }
    // Case: the policy is case sensitive and denies unmatched paths, so
    // `/ORDERS` meets no rule and nobody gets through.
    for who in [USER, ADMIN] {
        cases.push((M::GET, "/ORDERS", who, E403, None));
        cases.push((M::POST, "/Orders", who, E403, None));
    }
    cases.push((M::GET, "/ORDERS", NOBODY, E401, None));
    // Climbing out of an order lands on `/admin`, which no rule allows.
    cases.push((M::GET, "/orders/%2e%2e/admin", NOBODY, E401, None));
    cases.push((M::GET, "/orders/%2e%2e/admin", ADMIN, E403, None));
    cases.push((M::GET, "/orders/7/%2e%2e/%2e%2e/admin", ADMIN, E403, None));
    // Climbing out of `/public` into one order: the `/orders/{id}` rule applies.
    cases.push((M::GET, "/public/../orders/7", NOBODY, E401, None));
    cases.push((M::GET, "/public/../orders/7", USER, OK, Some("/orders/7")));
    // `/orders/7/..` is `/orders/` (GET prefix rule: admin only).
    cases.push((M::GET, "/orders/7/..", USER, E403, None));
    cases.push((M::GET, "/orders/7/..", ADMIN, OK, Some("/orders/")));
    // Double encoding is not decoded twice: `%252e%252e` is a literal segment.
    cases.push((
        M::GET,
        "/public/%252e%252e/orders",
        NOBODY,
        OK,
        Some("/public/%252e%252e/orders"),
    ));
    // The query is kept verbatim, even when the path is rewritten.
    cases.push((
        M::GET,
        "/public/../orders?x=1&next=%2F..%2Fadmin",
        ADMIN,
        OK,
        Some("/orders?x=1&next=%2F..%2Fadmin"),
    ));
    cases.push((
        M::POST,
        "//orders/./?a=%2e%2e",
        USER,
        OK,
        Some("/orders/?a=%2e%2e"),
    ));
    run_table(&layer, cases).await;
}

#[tokio::test]
async fn case_insensitive_policy_guards_every_spelling_of_a_path() {
    use Method as M;
    // For an upstream that routes case-insensitively (Express, as in the
    // seed), `/ORDERS` is `/orders` and must meet its rules; the upstream
    // gets the path as sent.
    let layer = orders_layer(true);
    run_table(
        &layer,
        vec![
            (M::GET, "/ORDERS", NOBODY, E401, None),
            (M::GET, "/ORDERS", USER, E403, None),
            (M::GET, "/Orders", USER, E403, None),
            (M::GET, "/%4Frders", USER, E403, None),
            (M::GET, "/ORDERS", ADMIN, OK, Some("/ORDERS")),
            (M::POST, "/oRdErS", USER, OK, Some("/oRdErS")),
            (M::GET, "/ORDERS/7", USER, OK, Some("/ORDERS/7")),
            (M::GET, "/PUBLIC/..%2FORDERS", ADMIN, E400, None),
            (M::GET, "/PUBLIC/%2E%2E/ORDERS", USER, E403, None),
            (M::GET, "/PUBLIC/x", NOBODY, OK, Some("/PUBLIC/x")),
        ],
    )
    .await;
}

#[tokio::test]
async fn no_identity_is_401_with_a_bare_bearer_challenge_and_realm_when_set() {
    let layer = orders_layer(false);
    let outcome = send(&layer, Method::GET, "/orders", NOBODY).await;
    check("no identity", &outcome, E401, None);
    let problem = outcome.problem();
    assert_eq!(problem["title"], "Unauthorized");
    assert_eq!(problem["type"], "about:blank");
    assert_eq!(problem["detail"], "authentication required");

    let layer = orders_layer(false).realm("orders");
    let outcome = send(&layer, Method::GET, "/orders", NOBODY).await;
    assert_eq!(outcome.status, E401);
    assert_eq!(
        outcome.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="orders""#
    );
    assert!(outcome.reached.is_empty());

    let outcome = send(&layer, Method::GET, "/orders", USER).await;
    check("identity without role", &outcome, E403, None);
    assert_eq!(outcome.problem()["title"], "Forbidden");
}

#[tokio::test]
async fn grpc_callers_get_trailers_only_status() {
    let layer = RbacLayer::require_any(["ops"]);
    for (who, grpc_status) in [(None, "16"), (Some(identity(&["user"])), "7")] {
        let seen = Seen::default();
        let mut request = Request::post("/grpc.health.v1.Health/Check")
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .body(String::new())
            .unwrap();
        if let Some(identity) = who {
            request.extensions_mut().insert(identity);
        }
        let response = tower_gateway::reject::RenderLayer::new()
            .layer(layer.layer(upstream(seen.clone())))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], grpc_status);
        assert!(response.body().is_rejection());
        assert!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        assert!(seen.lock().unwrap().is_empty());
    }
}

fn keycloak_identity(realm_roles: &[&str], client: &str, client_roles: &[&str]) -> Identity {
    identity_from(json!({
        "sub": "kc-user",
        "realm_access": { "roles": realm_roles },
        "resource_access": { client: { "roles": client_roles } },
        // A top-level claim the configured source must ignore.
        "roles": ["admin"],
    }))
}

fn keycloak_source() -> RoleSource {
    RoleSource::new([
        ClaimPath::dotted("realm_access.roles"),
        ClaimPath::new(["resource_access", "orders-api", "roles"]),
    ])
}

#[tokio::test]
async fn roles_come_from_keycloak_claims_when_a_role_source_is_set() {
    let layer = RbacLayer::new(orders_policy(false)).role_source(keycloak_source());
    let cases = [
        // Client role of this API.
        (
            keycloak_identity(&[], "orders-api", &["admin"]),
            Method::GET,
            OK,
        ),
        // Realm role.
        (
            keycloak_identity(&["user"], "orders-api", &[]),
            Method::POST,
            OK,
        ),
        (
            keycloak_identity(&["user"], "orders-api", &[]),
            Method::GET,
            E403,
        ),
        // `admin` of another client is not `admin` here.
        (
            keycloak_identity(&["offline_access"], "billing", &["admin"]),
            Method::GET,
            E403,
        ),
        // The top-level `roles: ["admin"]` is not read when a source is set.
        (keycloak_identity(&[], "orders-api", &[]), Method::GET, E403),
    ];
    for (i, (identity, method, status)) in cases.into_iter().enumerate() {
        let outcome = send_as(&layer, method.clone(), "/orders", Some(identity)).await;
        let reached = (status == OK).then_some("/orders");
        check(&format!("case {i}: {method}"), &outcome, status, reached);
    }

    // Without the source, the layer reads `Identity::roles` (the top-level
    // claim): the same identity is an admin.
    let plain = RbacLayer::new(orders_policy(false));
    let outcome = send_as(
        &plain,
        Method::GET,
        "/orders",
        Some(keycloak_identity(&[], "orders-api", &[])),
    )
    .await;
    check("default source", &outcome, OK, Some("/orders"));
}

#[tokio::test]
async fn roles_from_the_scope_string() {
    let policy = Policy::builder()
        .rule(
            Rule::new("/orders")
                .methods([Method::GET])
                .any_of(["orders:read"]),
        )
        .rule(
            Rule::new("/orders")
                .methods([Method::POST])
                .any_of(["orders:write"]),
        )
        .deny_unmatched(true)
        .build()
        .unwrap();
    let layer = RbacLayer::new(policy).role_source(RoleSource::scope());
    let reader = || identity_from(json!({ "sub": "app", "scope": "openid orders:read" }));
    let writer = || identity_from(json!({ "sub": "app", "scope": "orders:read  orders:write" }));
    let cases = [
        (reader(), Method::GET, OK),
        (reader(), Method::POST, E403),
        (writer(), Method::POST, OK),
        // A scope that merely starts like the wanted one is not it.
        (
            identity_from(json!({ "scope": "orders:readonly" })),
            Method::GET,
            E403,
        ),
        (
            identity_from(json!({ "roles": ["orders:read"] })),
            Method::GET,
            E403,
        ),
    ];
    for (i, (identity, method, status)) in cases.into_iter().enumerate() {
        let outcome = send_as(&layer, method.clone(), "/orders", Some(identity)).await;
        check(
            &format!("case {i}: {method}"),
            &outcome,
            status,
            (status == OK).then_some("/orders"),
        );
    }
}

#[tokio::test]
async fn keycloak_roles_through_jwt_auth_end_to_end() {
    let jwt = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(support::ISSUER)
                .audience(support::AUDIENCE)
                .key(JwtKey::hmac(support::HMAC_SECRET)),
        )
        .build()
        .unwrap();
    let rbac = RbacLayer::new(orders_policy(false))
        .role_source(RoleSource::new([
            ClaimPath::dotted("realm_access.roles"),
            // A client ID with a dot needs the segment form.
            ClaimPath::new(["resource_access", "orders.api", "roles"]),
        ]))
        .hierarchy(RoleHierarchy::new().inherit("admin", ["user"]));
    let token = |realm: &[&str], client: &[&str]| {
        let mut claims = support::claims("kc-user", &[]);
        claims["realm_access"] = json!({ "roles": realm });
        claims["resource_access"] = json!({ "orders.api": { "roles": client } });
        support::mint(Algorithm::HS256, None, &claims)
    };
    let cases: [(Option<String>, Method, StatusCode); 6] = [
        (None, Method::GET, E401),
        (Some(token(&["user"], &[])), Method::GET, E403),
        (Some(token(&["user"], &[])), Method::POST, OK),
        (Some(token(&[], &["admin"])), Method::GET, OK),
        (Some(token(&[], &["admin"])), Method::POST, OK),
        (Some(token(&["offline_access"], &[])), Method::POST, E403),
    ];
    for (i, (token, method, status)) in cases.into_iter().enumerate() {
        let seen = Seen::default();
        let svc = ServiceBuilder::new()
            .layer(jwt.clone())
            .layer(rbac.clone())
            .service(upstream(seen.clone()));
        let mut request = Request::builder()
            .method(method.clone())
            .uri("/public/%2e%2e/orders")
            .body(String::new())
            .unwrap();
        if let Some(token) = &token {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "case {i}");
        let reached = seen.lock().unwrap().clone();
        if status == OK {
            assert_eq!(reached, [format!("{method} /orders")], "case {i}");
        } else {
            assert!(reached.is_empty(), "case {i}: {reached:?}");
        }
        if status == E401 {
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
}

#[tokio::test]
async fn shadow_mode_lets_denials_through_and_counts_them_per_rule() {
    let policy = Arc::new(
        Policy::builder()
            .rule(Rule::new("/public").public())
            .rule(
                Rule::new("/orders")
                    .methods([Method::GET])
                    .any_of(["admin"])
                    .name("orders-read"),
            )
            .rule(
                Rule::new("/orders")
                    .methods([Method::POST])
                    .any_of(["user"]),
            )
            .deny_unmatched(true)
            .build()
            .unwrap(),
    );
    let layer = RbacLayer::new(policy.clone()).shadow(true);
    assert!(Arc::ptr_eq(layer.policy(), &policy));

    let cases: Vec<(Method, &str, Who, StatusCode, Option<&str>)> = vec![
        // Would be 401 / 403: passed through, normalized.
        (Method::GET, "/orders", NOBODY, OK, Some("/orders")),
        (Method::GET, "//orders?x=1", USER, OK, Some("/orders?x=1")),
        (
            Method::GET,
            "/public/%2e%2e/orders",
            VIEWER,
            OK,
            Some("/orders"),
        ),
        (Method::POST, "/orders", VIEWER, OK, Some("/orders")),
        (Method::DELETE, "/elsewhere", USER, OK, Some("/elsewhere")),
        // Allowed anyway: not counted.
        (Method::GET, "/orders", ADMIN, OK, Some("/orders")),
        (Method::POST, "/orders", USER, OK, Some("/orders")),
        (Method::GET, "/public", NOBODY, OK, Some("/public")),
        // Unnormalizable paths are refused even in shadow mode, and are not
        // policy denials.
        (Method::GET, "/orders%2f7", ADMIN, E400, None),
        (Method::GET, "/orders;x", NOBODY, E400, None),
    ];
    for (method, uri, who, status, reached) in cases {
        let outcome = send(&layer, method.clone(), uri, who).await;
        check(
            &format!("shadow {method} {uri} as {who:?}"),
            &outcome,
            status,
            reached,
        );
    }
    let denials = policy.denials();
    assert_eq!(
        denials,
        [
            ("* /public".to_owned(), 0),
            ("orders-read".to_owned(), 3),
            ("POST /orders".to_owned(), 1),
            ("<unmatched>".to_owned(), 1),
        ]
    );

    // The same policy enforced: the same requests are refused, and counted
    // on the same counters.
    let enforcing = RbacLayer::new(policy.clone());
    check(
        "enforced",
        &send(&enforcing, Method::GET, "/orders", USER).await,
        E403,
        None,
    );
    check(
        "enforced",
        &send(&enforcing, Method::GET, "/orders", NOBODY).await,
        E401,
        None,
    );
    assert_eq!(policy.denials()[1], ("orders-read".to_owned(), 5));
}

#[tokio::test]
async fn require_all_needs_every_role_after_the_hierarchy() {
    let layer = RbacLayer::require_all(["orders:read", "orders:write"]);
    let with_hierarchy = RbacLayer::require_all(["orders:read", "orders:write"])
        .hierarchy(RoleHierarchy::new().inherit("admin", ["orders:read", "orders:write"]));
    let cases: [(&RbacLayer, Who, StatusCode); 8] = [
        (&layer, NOBODY, E401),
        (&layer, Who::Roles(&["orders:read"]), E403),
        (&layer, Who::Roles(&["orders:write"]), E403),
        (&layer, Who::Roles(&["orders:write", "orders:read"]), OK),
        (&layer, ADMIN, E403),
        (&with_hierarchy, ADMIN, OK),
        (&with_hierarchy, Who::Roles(&["orders:read"]), E403),
        (&with_hierarchy, NOBODY, E401),
    ];
    for (i, (layer, who, status)) in cases.into_iter().enumerate() {
        // Every path and method: the single rule covers them all.
        let uri = ["/", "/anything/at/all?x=1", "/orders/7"][i % 3];
        let outcome = send(layer, Method::PATCH, uri, who).await;
        check(
            &format!("case {i}: {uri} as {who:?}"),
            &outcome,
            status,
            (status == OK).then_some(uri),
        );
    }

    // Scopes as the role source: all of them, from one space-separated claim.
    let scoped =
        RbacLayer::require_all(["orders:read", "orders:write"]).role_source(RoleSource::scope());
    let both = identity_from(json!({ "scope": "orders:write orders:read" }));
    let one = identity_from(json!({ "scope": "orders:write" }));
    check(
        "scope both",
        &send_as(&scoped, Method::GET, "/x", Some(both)).await,
        OK,
        Some("/x"),
    );
    check(
        "scope one",
        &send_as(&scoped, Method::GET, "/x", Some(one)).await,
        E403,
        None,
    );
}

#[tokio::test]
async fn require_any_and_require_authenticated() {
    let any = RbacLayer::require_any(["admin", "ops"]);
    let authed = RbacLayer::require_authenticated();
    let cases: [(&RbacLayer, Who, StatusCode); 6] = [
        (&any, Who::Roles(&["ops"]), OK),
        (&any, ADMIN, OK),
        (&any, USER, E403),
        (&any, NOBODY, E401),
        (&authed, Who::Roles(&[]), OK),
        (&authed, NOBODY, E401),
    ];
    for (i, (layer, who, status)) in cases.into_iter().enumerate() {
        let outcome = send(layer, Method::GET, "/x/./y", who).await;
        check(
            &format!("case {i}"),
            &outcome,
            status,
            (status == OK).then_some("/x/y"),
        );
    }
}

#[tokio::test]
async fn rbac_decides_on_the_path_the_upstream_receives_after_a_rewrite() {
    // NormalizePathLayer records `/api/orders`; a layer then strips `/api`
    // (as axum's `nest` does) before RBAC, whose rules name `/orders`. RBAC
    // must decide on `/orders`, the path the upstream receives, not on the
    // stale record — with deny_unmatched off, `/api/orders` would pass.
    let policy = Arc::new(
        Policy::builder()
            .rule(
                Rule::new("/orders")
                    .methods([Method::GET])
                    .any_of(["admin"]),
            )
            .build()
            .unwrap(),
    );
    for (who, status) in [(USER, E403), (NOBODY, E401), (ADMIN, OK)] {
        let seen = Seen::default();
        let svc = ServiceBuilder::new()
            .layer(NormalizePathLayer::new())
            .map_request(|mut request: Request<String>| {
                let stripped = request.uri().path().strip_prefix("/api").map(str::to_owned);
                if let Some(path) = stripped {
                    *request.uri_mut() = path.parse().unwrap();
                }
                request
            })
            .layer(RbacLayer::new(policy.clone()))
            .service(upstream(seen.clone()));
        let mut request = Request::get("/api//orders").body(String::new()).unwrap();
        if let Who::Roles(roles) = who {
            request.extensions_mut().insert(identity(roles));
        }
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{who:?}");
        let reached = seen.lock().unwrap().clone();
        if status == OK {
            assert_eq!(reached, ["GET /orders"]);
        } else {
            assert!(
                reached.is_empty(),
                "{who:?} reached the upstream: {reached:?}"
            );
        }
    }
}
