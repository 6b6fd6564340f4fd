#![cfg(all(
    feature = "jwt",
    feature = "rbac",
    feature = "ratelimit",
    feature = "proxy",
    feature = "server"
))]
//! The three-route gateway of the crate documentation
//! (`examples/three_routes/gateway.rs`, included here as it is), driven
//! over real sockets: every refusal it owes (401, 403, 404, 405, 429), the
//! path it forwards, and a per-IP limit that can be left out.

#[path = "../examples/three_routes/gateway.rs"]
mod gateway;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SECRET: &[u8] = b"a-32-byte-secret-from-your-vault";

/// The upstream: answers with the method and the path it received.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|request: Request<tower_gateway::server::Body>| async move {
        let body = format!("{} {}", request.method(), request.uri());
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
    });
    tokio::spawn(tower_gateway::server::serve(listener, svc).into_future());
    addr
}

async fn start(per_ip: Option<u32>) -> SocketAddr {
    let app = upstream().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { gateway::gateway(listener, app, per_ip).await.unwrap() });
    addr
}

fn token(sub: &str, roles: &[&str]) -> String {
    tower_gateway::auth::install_crypto_backend();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://example.com", "sub": sub, "roles": roles,
        "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    /// The `code` of the problem document the refusal was rendered as.
    fn code(&self) -> String {
        let problem: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        problem["code"].as_str().unwrap_or("").to_owned()
    }
}

async fn send(addr: SocketAddr, method: Method, path: &str, bearer: Option<&str>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(request.body(Full::default()).unwrap()),
    )
    .await
    .expect("the gateway answers within 5 s")
    .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn each_route_refuses_what_it_must_and_forwards_the_rest() {
    let gw = start(None).await;
    let (user, admin) = (token("alice", &["user"]), token("root", &["admin"]));

    // Admin-only GET /orders.
    let reply = send(gw, Method::GET, "/orders", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
    let reply = send(gw, Method::GET, "/orders", Some(&user)).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "insufficient_role")
    );
    let reply = send(gw, Method::GET, "/orders", Some(&admin)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "GET /orders")
    );

    // POST /orders for users (and admins).
    for who in [&user, &admin] {
        let reply = send(gw, Method::POST, "/orders", Some(who)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "POST /orders")
        );
    }
    // An invalid token is refused with the RFC 6750 error.
    let reply = send(gw, Method::POST, "/orders", Some("a.b.c")).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    // Other methods of /orders: 405 with the route's methods.
    let reply = send(gw, Method::DELETE, "/orders", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[header::ALLOW], "GET, HEAD, POST");
    // No route: 404, whatever the credentials; `/orders` is exact.
    for path in ["/nope", "/orders/7", "/ordersX"] {
        let reply = send(gw, Method::GET, path, Some(&admin)).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::NOT_FOUND, "no_route"),
            "{path}"
        );
    }

    // /public: no token needed, and a bad one is not even looked at.
    for bearer in [None, Some("not-a-token")] {
        let reply = send(gw, Method::GET, "/public/docs/../index.html?x=1", bearer).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "GET /public/index.html?x=1"),
            "the normalized path is forwarded"
        );
    }
}

#[tokio::test]
async fn payments_take_any_valid_token_and_are_limited_per_consumer() {
    let gw = start(None).await;
    let reply = send(gw, Method::GET, "/payments/7", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let (alice, bob) = (token("alice", &[]), token("bob", &["user"]));
    // 2 per second per consumer: within one second the third is refused.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            send(gw, Method::GET, "/payments/7", Some(&alice))
                .await
                .status,
        );
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    let limited = send(gw, Method::GET, "/payments/7", Some(&alice)).await;
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    // Another consumer has a bucket of its own; other routes have no limit.
    let reply = send(gw, Method::POST, "/payments", Some(&bob)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "POST /payments")
    );
    for _ in 0..5 {
        assert_eq!(
            send(gw, Method::GET, "/public", None).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn the_per_ip_limit_applies_when_on_and_is_left_out_when_off() {
    let on = start(Some(3)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(on, Method::GET, "/public", None).await.status);
    }
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert!(
        statuses[3..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Before authentication: an anonymous flood of a protected route is
    // refused by it too.
    let reply = send(on, Method::GET, "/orders", None).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);

    let off = start(None).await;
    for _ in 0..10 {
        assert_eq!(
            send(off, Method::GET, "/public", None).await.status,
            StatusCode::OK
        );
    }
}

/// Every layer that decides (route matching, client address, path, auth,
/// RBAC, both rate limiters, the breaker) keeps its inner service's
/// response and error types, so each one can be left out with
/// `option_layer`: this stack compiles only because of that, and serves
/// the same way whichever layers are present.
#[tokio::test]
async fn every_deciding_layer_can_be_left_out() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_gateway::{
        auth::{Issuer, JwtAuthLayer, JwtKey},
        circuit::{CircuitBreakerLayer, CircuitConfig},
        client_addr::{ClientAddrLayer, TrustedProxies},
        path::NormalizePathLayer,
        ratelimit::{ClientIp, Limit, RateLimitLayer, RouteRateLimitLayer},
        rbac::RbacLayer,
        reject::RenderLayer,
        route::{Route, RouteLayer, Routes},
    };

    let routes = Routes::builder()
        .route(Route::prefix("/public").auth(tower_gateway::auth::AuthMode::None))
        .build()
        .unwrap();
    for on in [false, true] {
        let auth = JwtAuthLayer::builder()
            .issuer(Issuer::new("https://example.com").key(JwtKey::hmac(SECRET)))
            .build()
            .unwrap();
        let per_ip = RateLimitLayer::builder()
            .key(ClientIp::peer())
            .limit(Limit::new().per_second(1000))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(RenderLayer::new())
            .option_layer(on.then(|| ClientAddrLayer::new(TrustedProxies::none())))
            .option_layer(on.then(NormalizePathLayer::new))
            .option_layer(on.then(|| RouteLayer::new(&routes)))
            .option_layer(on.then_some(per_ip))
            .option_layer(on.then_some(auth))
            .option_layer(on.then(RbacLayer::default))
            .option_layer(on.then(RouteRateLimitLayer::new))
            .option_layer(on.then(|| CircuitBreakerLayer::new("app", CircuitConfig::default())))
            .service_fn(|request: Request<String>| async move {
                let body = format!("{} {}", request.method(), request.uri().path());
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
        let mut request = Request::get("/public/a/../b").body(String::new()).unwrap();
        request
            .extensions_mut()
            .insert(tower_gateway::connection::ClientAddr(
                "127.0.0.1:1".parse().unwrap(),
            ));
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let expected = if on {
            "GET /public/b"
        } else {
            "GET /public/a/../b"
        };
        assert_eq!(body, expected);
        // With the route layer on, an unknown path is refused (rendered by
        // the one render step); with every layer off, it is served.
        let response = svc
            .oneshot(Request::get("/nope").body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            if on {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            }
        );
    }
}
