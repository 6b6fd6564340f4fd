//! The same layers under three stacks — axum, plain hyper and tonic — over
//! real loopback sockets: rejections as HTTP problem JSON or gRPC status,
//! identities visible to handlers, paths normalized before anything decides.
#![cfg(all(feature = "jwt", feature = "rbac"))]
mod support;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Extension, Router,
    response::IntoResponse,
    routing::{delete, get},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint, server::TcpIncoming},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::ServiceBuilder;
use tower_gateway::{
    auth::{Issuer, JwtAuthBuilder, JwtAuthLayer, JwtKey},
    identity::Identity,
    path::NormalizePathLayer,
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
    reject::{Rejection, RenderLayer, RenderRejection, Renderer, RequestHead},
};

/// Upper bound on any one network exchange, so a broken stack fails instead
/// of hanging.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on the connections a test server accepts.
const MAX_CONNECTIONS: usize = 64;

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------
// Tokens and layers shared by the stacks.

fn jwt_builder() -> JwtAuthBuilder {
    JwtAuthLayer::builder().issuer(
        Issuer::new(support::ISSUER)
            .audience(support::AUDIENCE)
            .key(JwtKey::hmac(support::HMAC_SECRET)),
    )
}

fn jwt() -> JwtAuthLayer {
    jwt_builder().build().unwrap()
}

fn token(sub: &str, roles: &[&str]) -> String {
    support::mint(Algorithm::HS256, None, &support::claims(sub, roles))
}

fn expired_token() -> String {
    let mut claims = support::claims("alice", &["admin"]);
    claims["iat"] = json!(support::now() - 7200);
    claims["exp"] = json!(support::now() - 3600);
    support::mint(Algorithm::HS256, None, &claims)
}

/// The seed's Order service policy: GET admin, POST user (admins too, by
/// hierarchy), DELETE any caller (a route layer narrows it), `/whoami` any
/// caller, nothing else.
fn gateway_policy() -> Policy {
    Policy::builder()
        .rule(Rule::exact("/whoami").authenticated())
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
            Rule::new("/orders")
                .methods([Method::DELETE])
                .authenticated(),
        )
        .deny_unmatched(true)
        .build()
        .unwrap()
}

fn rbac() -> RbacLayer {
    RbacLayer::new(gateway_policy()).hierarchy(RoleHierarchy::new().inherit("admin", ["user"]))
}

fn target(uri: &Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
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
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The RFC 9457 problem document, checked against the status.
    fn problem(&self) -> Value {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{self:?}"
        );
        let problem: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(problem["type"], "about:blank");
        assert_eq!(problem["status"], self.status.as_u16());
        assert_eq!(
            problem["title"],
            self.status.canonical_reason().unwrap(),
            "{problem}"
        );
        problem
    }
}

struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    fn new(addr: SocketAddr, http2: bool) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        Self {
            client,
            base: format!("http://{addr}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let what = format!("{method} {path}");
        let response = within(&what, self.client.request(request))
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

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, &[]).await
    }
}

/// What every HTTP stack must answer, whatever the framework. The handler
/// behind `/orders` answers `METHOD path?query as SUBJECT`, read from the
/// `Identity` in the request extensions.
async fn check_http_gateway(client: &HttpClient) {
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);

    // No token: 401, a bare Bearer challenge (RFC 6750 §3.1), problem JSON.
    let reply = client.get("/orders", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    let problem = reply.problem();
    assert_eq!(problem["code"], "missing_token");
    assert_eq!(problem["detail"], "authentication required");

    // A bad token: 401 with error="invalid_token".
    let reply = client.get("/orders", Some("not.a.token")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token""#),
        "{challenge}"
    );
    let problem = reply.problem();
    assert_eq!(problem["code"], "invalid_token");
    assert_eq!(problem["detail"], "the access token is invalid");

    let reply = client.get("/orders", Some(&expired_token())).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.problem()["detail"], "the access token expired");

    // A valid token without the role: 403, no challenge.
    let reply = client.get("/orders", Some(&user)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(!reply.headers.contains_key(header::WWW_AUTHENTICATE));
    let problem = reply.problem();
    assert_eq!(problem["code"], "insufficient_role");
    assert_eq!(problem["detail"], "insufficient role");

    // Allowed: the handler sees the identity.
    let reply = client.get("/orders?page=2", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "GET /orders?page=2 as root");
    let reply = client.send(Method::POST, "/orders", Some(&user), &[]).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "POST /orders as alice")
    );
    // admin implies user.
    let reply = client
        .send(Method::POST, "/orders", Some(&admin), &[])
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "POST /orders as root")
    );

    let reply = client.get("/whoami", Some(&user)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(reply.text().ends_with("alice"), "{reply:?}");

    // Nothing else is allowed.
    let reply = client.get("/nowhere", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    reply.problem();

    // Refused encodings: 400, before any handler.
    let reply = client.get("/orders%2f7", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.problem()["code"], "invalid_path");

    // A spelling of `/orders` is decided as `/orders`.
    let reply = client.get("/whoami/%2e%2e/orders", Some(&user)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
}

// ---------------------------------------------------------------------------
// axum

async fn echo(Extension(identity): Extension<Identity>, request: axum::extract::Request) -> String {
    format!(
        "{} {} as {}",
        request.method(),
        target(request.uri()),
        identity.subject().unwrap_or("-")
    )
}

async fn whoami(request: axum::extract::Request) -> String {
    request
        .extensions()
        .get::<Identity>()
        .and_then(Identity::subject)
        .unwrap_or("-")
        .to_owned()
}

fn axum_app(jwt: JwtAuthLayer, rbac: RbacLayer) -> Router {
    axum_app_rendered_by(jwt, rbac, Renderer::default())
}

/// The one render step sits outermost; the refusals of every layer inside,
/// the per-route RBAC of `/orders/{id}` included, are rendered there.
fn axum_app_rendered_by(jwt: JwtAuthLayer, rbac: RbacLayer, renderer: Renderer) -> Router {
    Router::new()
        .route("/orders", get(echo).post(echo))
        .route("/whoami", get(whoami))
        .route(
            "/orders/{id}",
            delete(
                |axum::extract::Path(id): axum::extract::Path<u32>| async move {
                    format!("deleted {id}")
                },
            )
            .route_layer(RbacLayer::require_any(["admin"])),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RenderLayer::new().renderer(renderer))
                .layer(jwt)
                .layer(rbac),
        )
}

async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn axum_router_with_jwt_and_rbac() {
    let addr = serve_axum(axum_app(jwt(), rbac())).await;
    let client = HttpClient::new(addr, false);
    check_http_gateway(&client).await;

    // The handler read `req.extensions().get::<Identity>()`.
    let reply = client
        .get("/whoami", Some(&token("alice", &["user"])))
        .await;
    assert_eq!(reply.text(), "alice");

    // Per-route layer: the policy lets any caller DELETE, the route asks for admin.
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);
    let reply = client
        .send(Method::DELETE, "/orders/7", Some(&user), &[])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.problem()["code"], "insufficient_role");
    let reply = client
        .send(Method::DELETE, "/orders/7", Some(&admin), &[])
        .await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "deleted 7"));
    let reply = client.send(Method::DELETE, "/orders/7", None, &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");

    // axum answers HEAD with the GET handler: the GET rule guards it.
    let reply = client.send(Method::HEAD, "/orders", Some(&user), &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let reply = client
        .send(Method::HEAD, "/orders", Some(&admin), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn axum_normalizes_before_routing_and_nested_rbac_sees_the_routed_path() {
    // NormalizePathLayer in front of the router (axum's way for middleware
    // that must run before routing): the router, the nested API's RBAC and
    // the handler all see one path.
    let api_policy = Policy::builder()
        .rule(
            Rule::new("/orders")
                .methods([Method::GET])
                .any_of(["admin"]),
        )
        .build()
        .unwrap();
    let api = Router::new()
        .route("/orders", get(echo))
        .route("/whoami", get(whoami))
        .layer(
            ServiceBuilder::new()
                .layer(jwt())
                .layer(RbacLayer::new(api_policy)),
        );
    let app = Router::new()
        .nest("/api", api)
        .route("/public/{*rest}", get(|| async { "public" }));
    let svc = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(RenderLayer::new())
        .layer(NormalizePathLayer::new())
        .service(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(svc);
        axum::serve(listener, make).await.unwrap()
    });
    let client = HttpClient::new(addr, false);
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);

    // Routed as `/api/orders`; the nested API's rule for `/orders` applies
    // (its RBAC decides on the path it is given, not a stale record of the
    // outer one — otherwise `/api/orders` matches no rule and passes).
    for path in [
        "/api/orders",
        "/public/%2e%2e/api/orders",
        "//api/./orders",
        "/%61pi/orders",
    ] {
        let reply = client.get(path, Some(&user)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {reply:?}");
        let reply = client.get(path, Some(&admin)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert_eq!(reply.text(), "GET /orders as root", "{path}");
    }
    let reply = client.get("/public/x/../../api/whoami", Some(&user)).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "alice"));
    let reply = client.get("/public/..%2fapi/orders", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.problem()["code"], "invalid_path");
    let reply = client.get("/public/a/b", None).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "public"));
}

/// Renders every rejection as `{"error": code, "status": n, "path": p}`.
struct ErrorJson;

impl RenderRejection for ErrorJson {
    fn render(&self, rejection: &Rejection, request: &RequestHead<'_>) -> Response<Bytes> {
        let body = json!({
            "error": rejection.code(),
            "status": rejection.status().as_u16(),
            "path": request.uri.path(),
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = rejection.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.gateway.error+json"),
        );
        response.headers_mut().extend(rejection.headers().clone());
        response
    }
}

#[tokio::test]
async fn axum_with_a_custom_renderer() {
    let renderer = Renderer::new(ErrorJson);
    let jwt = jwt_builder().build().unwrap();
    let addr = serve_axum(axum_app_rendered_by(jwt, rbac(), renderer)).await;
    let client = HttpClient::new(addr, false);

    let cases = [
        ("/orders", None, StatusCode::UNAUTHORIZED, "missing_token"),
        (
            "/orders",
            Some("garbage"),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "/orders",
            Some("user"),
            StatusCode::FORBIDDEN,
            "insufficient_role",
        ),
        (
            "/orders%5c1",
            Some("admin"),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
    ];
    for (path, who, status, code) in cases {
        let bearer = match who {
            Some("garbage") => Some("a.b.c".to_owned()),
            Some(role) => Some(token("alice", &[role])),
            None => None,
        };
        let reply = client.get(path, bearer.as_deref()).await;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/vnd.gateway.error+json"
        );
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({ "error": code, "status": status.as_u16(), "path": path })
        );
        // The challenge survives the custom shape.
        assert_eq!(
            reply.headers.contains_key(header::WWW_AUTHENTICATE),
            status == StatusCode::UNAUTHORIZED
        );
    }
    // Allowed requests are untouched by the renderer.
    let reply = client
        .get("/orders", Some(&token("root", &["admin"])))
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "GET /orders as root")
    );
}

// ---------------------------------------------------------------------------
// plain hyper

/// Runs a hyper service (always ready) as a Tower service, so Tower layers
/// can wrap it.
#[derive(Clone)]
struct HyperToTower<S>(S);

impl<S, R> tower::Service<R> for HyperToTower<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // hyper services have no readiness: `call` takes `&self`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> S::Future {
        self.0.call(request)
    }
}

async fn serve_hyper() -> SocketAddr {
    let handler = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let who = request
            .extensions()
            .get::<Identity>()
            .and_then(Identity::subject)
            .unwrap_or("-")
            .to_owned();
        let body = format!("{} {} as {who}", request.method(), target(request.uri()));
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let svc = ServiceBuilder::new()
        .layer(RenderLayer::new())
        .layer(NormalizePathLayer::new())
        .layer(jwt())
        .layer(rbac())
        .service(HyperToTower(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                // HTTP/1.1 or HTTP/2, whichever the client speaks.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_hyper_http1_and_http2() {
    let addr = serve_hyper().await;
    for http2 in [false, true] {
        let client = HttpClient::new(addr, http2);
        check_http_gateway(&client).await;
        // Normalized once, at the edge: the handler gets the decided path
        // and the query verbatim.
        let admin = token("root", &["admin"]);
        let reply = client
            .get("/whoami/../orders/./?q=%2F..", Some(&admin))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), "GET /orders/?q=%2F.. as root");
    }
}

#[tokio::test]
async fn plain_hyper_answers_grpc_callers_with_grpc_status() {
    let addr = serve_hyper().await;
    let client = HttpClient::new(addr, true);
    let grpc = [
        (header::CONTENT_TYPE.as_str(), "application/grpc"),
        ("te", "trailers"),
    ];
    let user = token("alice", &["user"]);
    for (who, status, message) in [
        (None, "16", "authentication required"),
        (Some("bad.token.here"), "16", "the access token is invalid"),
        (Some(user.as_str()), "7", "insufficient role"),
    ] {
        let reply = client
            .send(Method::POST, "/orders.v1.Orders/List", who, &grpc)
            .await;
        // Trailers-only: HTTP 200, the status in the headers, no body.
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.headers[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(reply.headers["grpc-status"], status, "{reply:?}");
        assert_eq!(reply.headers["grpc-message"], message);
        assert!(reply.body.is_empty());
    }
}

// ---------------------------------------------------------------------------
// tonic

async fn serve_tonic() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    let policy = Policy::builder()
        .rule(Rule::new("/grpc.health.v1.Health").any_of(["ops"]))
        .deny_unmatched(true)
        .build()
        .unwrap();
    let router = tonic::transport::Server::builder()
        .layer(RenderLayer::new())
        .layer(jwt())
        .layer(RbacLayer::new(policy))
        .add_service(health);
    tokio::spawn(async move {
        let _reporter = reporter;
        router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    within("connect", endpoint.connect()).await.unwrap()
}

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().unwrap()
}

fn check_request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test]
async fn tonic_server_with_jwt_and_rbac() {
    let addr = serve_tonic().await;
    let channel = channel(addr).await;

    // No token.
    let status = within(
        "check",
        HealthClient::new(channel.clone()).check(check_request()),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "authentication required");
    assert_eq!(status.metadata().get("www-authenticate").unwrap(), "Bearer");

    // A bad token, set on the request's metadata.
    let mut request = tonic::Request::new(check_request());
    request
        .metadata_mut()
        .insert("authorization", bearer("x.y.z"));
    let status = within("check", HealthClient::new(channel.clone()).check(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "the access token is invalid");

    // Valid token without the role, set by an interceptor.
    let user = bearer(&token("alice", &["user"]));
    let mut client =
        HealthClient::with_interceptor(channel.clone(), move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", user.clone());
            Ok(request)
        });
    let status = within("check", client.check(check_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "insufficient role");

    // Valid token with the role.
    let ops = bearer(&token("ops-bot", &["ops"]));
    let mut client =
        HealthClient::with_interceptor(channel.clone(), move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", ops.clone());
            Ok(request)
        });
    let response = within("check", client.check(check_request()))
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);

    // A server stream passes through the layers' body untouched.
    let mut stream = within("watch", client.watch(check_request()))
        .await
        .unwrap()
        .into_inner();
    let first = within("watch message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
}
