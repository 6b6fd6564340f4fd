#![cfg(all(
    feature = "jwt",
    feature = "rbac",
    feature = "ratelimit",
    feature = "server"
))]
//! The examples users copy — `examples/axum_app`, `examples/tonic_service`
//! and `examples/hyper_service`, included here as they are — each served
//! in-process on a loopback port and driven over real sockets: a valid
//! token is served, no token is 401 with a Bearer challenge, a missing role
//! is 403, a consumer over its limit is 429 with `Retry-After`; over gRPC,
//! the same refusals arrive at a tonic client as UNAUTHENTICATED,
//! PERMISSION_DENIED and RESOURCE_EXHAUSTED.

#[path = "../examples/axum_app/app.rs"]
mod axum_app;
#[path = "../examples/hyper_service/service.rs"]
mod hyper_service;
#[path = "../examples/tonic_service/orders.rs"]
mod tonic_service;

use std::{future::Future, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header, uri::PathAndQuery};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_prost::ProstCodec;

const SECRET: &[u8] = b"examples-to-copy-secret-32-bytes";
/// Upper bound on any one exchange, so a broken example fails instead of
/// hanging the suite.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {TIMEOUT:?}"))
}

/// A token as the examples' auth server would issue it.
fn token(audience: &str, subject: &str, roles: &[&str]) -> String {
    tower_gateway::auth::install_crypto_backend();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The three examples share one issuer.
    assert_eq!(axum_app::ISSUER, tonic_service::ISSUER);
    assert_eq!(axum_app::ISSUER, hyper_service::ISSUER);
    let claims = json!({
        "iss": axum_app::ISSUER, "aud": audience, "sub": subject, "roles": roles,
        "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

// ---------------------------------------------------------------------------
// An HTTP client over loopback.

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `code` of the RFC 9457 problem document the refusal was
    /// rendered as.
    fn problem_code(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{self:?}"
        );
        let problem = self.json();
        assert_eq!(problem["status"], self.status.as_u16(), "{problem}");
        problem["code"].as_str().unwrap_or_default().to_owned()
    }

    /// `Retry-After` in seconds.
    fn retry_after(&self) -> u64 {
        self.headers
            .get(header::RETRY_AFTER)
            .unwrap_or_else(|| panic!("no Retry-After: {self:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(bearer) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let body = match json_body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let what = format!("{method} {path}");
        let response = within(
            &what,
            self.client.request(request.body(Full::new(body)).unwrap()),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (parts, body) = response.into_parts();
        let body = within(&what, body.collect()).await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(Method::GET, path, bearer, None).await
    }
}

fn assert_bearer_challenge(reply: &Reply, code: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(reply.problem_code(), code);
}

fn assert_rate_limited(reply: &Reply, window: Duration) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(reply.problem_code(), "rate_limited");
    let retry_after = reply.retry_after();
    assert!(
        (1..=window.as_secs()).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
}

// ---------------------------------------------------------------------------
// examples/axum_app

async fn serve_axum_app() -> HttpClient {
    let app = axum_app::app(SECRET).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    HttpClient::new(addr)
}

fn axum_token(subject: &str, roles: &[&str]) -> String {
    token(axum_app::AUDIENCE, subject, roles)
}

#[tokio::test]
async fn axum_app_keeps_its_routing_and_checks_roles_per_route() {
    let client = serve_axum_app().await;
    let alice = axum_token("alice", &["user"]);
    let bob = axum_token("bob", &["user"]);
    let root = axum_token("root", &["admin"]);

    // Public, and axum's own 404 for paths no route takes: no token asked.
    let reply = client.get("/health", None).await;
    assert_eq!(
        (reply.status, &reply.body[..]),
        (StatusCode::OK, &b"ok"[..])
    );
    let reply = client.get("/nowhere", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");

    // No token, a bad token: 401 with an RFC 6750 challenge.
    assert_bearer_challenge(&client.get("/orders", None).await, "missing_token");
    assert_bearer_challenge(
        &client.get("/orders", Some("not.a.token")).await,
        "invalid_token",
    );
    // A token for another audience is not a token for this app.
    let foreign = token("another-api", "alice", &["admin"]);
    assert_bearer_challenge(
        &client.get("/orders", Some(&foreign)).await,
        "invalid_token",
    );

    // GET /orders is admin-only.
    let reply = client.get("/orders", Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(!reply.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(reply.problem_code(), "insufficient_role");

    // A user places an order; the handler read the caller's identity.
    let reply = client
        .send(
            Method::POST,
            "/orders",
            Some(&alice),
            Some(json!({ "item": "tea" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let order = reply.json();
    assert_eq!(
        (order["item"].as_str(), order["owner"].as_str()),
        (Some("tea"), Some("alice"))
    );
    let path = format!("/orders/{}", order["id"]);

    // Users see their own orders only; admins see every order.
    let reply = client.get(&path, Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json(), order);
    assert_eq!(
        client.get(&path, Some(&bob)).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = client.get("/orders", Some(&root)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json(), json!([order]));

    // DELETE is admin-only: the user's attempt is refused before the handler.
    let reply = client.send(Method::DELETE, &path, Some(&alice), None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let reply = client.send(Method::DELETE, &path, Some(&root), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
    let reply = client.send(Method::DELETE, &path, None, None).await;
    assert_bearer_challenge(&reply, "missing_token");
}

#[tokio::test]
async fn axum_app_limits_writes_per_consumer_with_retry_after() {
    let client = serve_axum_app().await;
    let carol = axum_token("carol", &["user"]);
    let place = |bearer: String| {
        let client = &client;
        async move {
            client
                .send(
                    Method::POST,
                    "/orders",
                    Some(&bearer),
                    Some(json!({ "item": "tea" })),
                )
                .await
        }
    };
    for n in 0..axum_app::WRITES_PER_MINUTE {
        let reply = place(carol.clone()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "order {n}: {reply:?}");
    }
    assert_rate_limited(&place(carol.clone()).await, Duration::from_secs(60));
    // Her reads have a limit of their own, not yet spent.
    let reply = client.get("/orders/1", Some(&carol)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // Another consumer has a bucket of their own, even with the same role.
    let dave = axum_token("dave", &["user"]);
    assert_eq!(place(dave).await.status, StatusCode::CREATED);
}

// ---------------------------------------------------------------------------
// examples/tonic_service

async fn serve_tonic_service() -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { tonic_service::serve(listener, SECRET).await });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    within("connect", endpoint.connect()).await.unwrap()
}

/// One unary call of `orders.v1.Orders` with a tonic client, as a
/// `tonic-build` client would make it.
async fn call<Req, Res>(
    channel: &Channel,
    path: &'static str,
    bearer: Option<&str>,
    message: Req,
) -> Result<tonic::Response<Res>, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Res: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    within(path, grpc.ready())
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    if let Some(bearer) = bearer {
        let value = format!("Bearer {bearer}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    let path = PathAndQuery::from_static(path);
    within("call", grpc.unary(request, path, ProstCodec::default())).await
}

async fn get_order(
    channel: &Channel,
    bearer: Option<&str>,
    id: u64,
) -> Result<tonic_service::Order, Status> {
    let request = tonic_service::GetOrderRequest { id };
    call(channel, tonic_service::GET_ORDER, bearer, request)
        .await
        .map(tonic::Response::into_inner)
}

fn grpc_token(subject: &str, roles: &[&str]) -> String {
    token(tonic_service::AUDIENCE, subject, roles)
}

#[tokio::test]
async fn tonic_service_refuses_with_unauthenticated_and_permission_denied() {
    let channel = serve_tonic_service().await;
    let alice = grpc_token("alice", &["user"]);
    let root = grpc_token("root", &["admin"]);

    // The health service is public.
    let reply = within(
        "health",
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: tonic_service::SERVICE.to_owned(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.into_inner().status, ServingStatus::Serving as i32);

    // No token: UNAUTHENTICATED, with the Bearer challenge in the metadata.
    let status = get_order(&channel, None, 7).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "authentication required");
    assert_eq!(status.metadata().get("www-authenticate").unwrap(), "Bearer");
    // A bad token: UNAUTHENTICATED even though anonymous calls may reach
    // the health service.
    let status = get_order(&channel, Some("a.b.c"), 7).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "the access token is invalid");

    // A user may get an order; the handler read the caller's identity.
    let order = get_order(&channel, Some(&alice), 7).await.unwrap();
    assert_eq!((order.id, order.owner.as_str()), (7, "alice"));
    // The service's own statuses pass through the layers untouched.
    let status = get_order(&channel, Some(&alice), 0).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Only an admin may cancel one.
    let cancel = tonic_service::CancelOrderRequest { id: 7 };
    let status = call::<_, tonic_service::CancelOrderReply>(
        &channel,
        tonic_service::CANCEL_ORDER,
        Some(&alice),
        cancel.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "insufficient role");
    let reply: tonic_service::CancelOrderReply =
        call(&channel, tonic_service::CANCEL_ORDER, Some(&root), cancel)
            .await
            .unwrap()
            .into_inner();
    assert!(reply.cancelled);
    // Admins are users too (role hierarchy).
    assert!(get_order(&channel, Some(&root), 1).await.is_ok());
}

#[tokio::test]
async fn tonic_service_refuses_a_consumer_over_its_limit_with_resource_exhausted() {
    let channel = serve_tonic_service().await;
    let carol = grpc_token("carol", &["user"]);
    for n in 0..tonic_service::CALLS_PER_MINUTE {
        let reply = get_order(&channel, Some(&carol), 1).await;
        assert!(reply.is_ok(), "call {n}: {reply:?}");
    }
    let status = get_order(&channel, Some(&carol), 1).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "retry-after: {retry_after}"
    );
    // Another consumer is not affected.
    let dave = grpc_token("dave", &["user"]);
    assert_eq!(
        get_order(&channel, Some(&dave), 1).await.unwrap().owner,
        "dave"
    );
}

// ---------------------------------------------------------------------------
// examples/hyper_service

struct HyperServer {
    client: HttpClient,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<tower_gateway::server::ShutdownReport, tower::BoxError>>,
}

async fn serve_hyper_service() -> HyperServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let server = tokio::spawn(hyper_service::serve(listener, SECRET, shutdown));
    HyperServer {
        client: HttpClient::new(addr),
        stop,
        server,
    }
}

fn hyper_token(subject: &str, roles: &[&str]) -> String {
    token(hyper_service::AUDIENCE, subject, roles)
}

#[tokio::test]
async fn hyper_service_behind_the_route_model_refuses_what_its_routes_say() {
    let HyperServer {
        client,
        stop,
        server,
    } = serve_hyper_service().await;
    let alice = hyper_token("alice", &["user"]);
    let root = hyper_token("root", &["admin"]);

    // Public: the token is not even looked at.
    for bearer in [None, Some("not.a.token")] {
        let reply = client.get("/health", bearer).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    // Requests no route takes never reach the handler.
    let reply = client.get("/nowhere", Some(&root)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.problem_code(), "no_route");
    let reply = client
        .send(Method::DELETE, "/orders", Some(&root), None)
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{reply:?}");
    assert_eq!(reply.headers[header::ALLOW], "GET, HEAD, POST");

    assert_bearer_challenge(&client.get("/orders", None).await, "missing_token");
    assert_bearer_challenge(
        &client.get("/orders/7", Some("x.y.z")).await,
        "invalid_token",
    );
    let reply = client.get("/orders", Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.problem_code(), "insufficient_role");

    let reply = client.get("/orders", Some(&root)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reply = client
        .send(Method::POST, "/orders", Some(&alice), None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.json()["owner"], "alice");
    // The handler gets the normalized path the route was matched on.
    let reply = client.get("/health/../orders/./7", Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "id": 7, "item": "tea", "owner": "alice" })
    );

    // Graceful shutdown: nothing in flight is cut.
    let _ = stop.send(());
    let report = within("shutdown", server).await.unwrap().unwrap();
    assert_eq!(report.cut, 0);
}

#[tokio::test]
async fn hyper_service_limits_each_consumer_across_its_routes() {
    // Kept to the end: dropping `stop` would shut the server down.
    let HyperServer {
        client,
        stop: _stop,
        ..
    } = serve_hyper_service().await;
    let carol = hyper_token("carol", &["user"]);
    // One bucket per consumer, shared by the two `/orders` routes.
    for n in 0..hyper_service::CALLS_PER_MINUTE {
        let reply = if n % 2 == 0 {
            client.get("/orders/7", Some(&carol)).await
        } else {
            client
                .send(Method::POST, "/orders", Some(&carol), None)
                .await
        };
        assert!(reply.status.is_success(), "call {n}: {reply:?}");
        // Admitted responses carry the quota left.
        assert!(reply.headers.contains_key("ratelimit"), "{reply:?}");
    }
    assert_rate_limited(
        &client.get("/orders/7", Some(&carol)).await,
        Duration::from_secs(60),
    );
    // Others are unaffected, and /health has no limit.
    let dave = hyper_token("dave", &["user"]);
    assert_eq!(
        client.get("/orders/7", Some(&dave)).await.status,
        StatusCode::OK
    );
    for _ in 0..10 {
        assert_eq!(client.get("/health", None).await.status, StatusCode::OK);
    }
}
