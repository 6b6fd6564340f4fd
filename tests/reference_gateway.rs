#![cfg(all(
    feature = "jwks",
    feature = "rbac",
    feature = "metrics",
    feature = "ratelimit",
    feature = "proxy",
    feature = "tls"
))]
//! The reference gateway (`cargo run --example gateway`) driven from
//! outside, over real sockets: the auth server's tokens, the services behind
//! mTLS, RBAC at the gateway and in the services, rate limits, metrics.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

struct Gateway {
    addr: SocketAddr,
    auth: SocketAddr,
    admin: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Gateway {
    async fn start(per_second: u32) -> Self {
        Self::start_with(app::Config {
            per_second,
            ..app::Config::default()
        })
        .await
    }

    async fn start_with(config: app::Config) -> Self {
        let running = app::start(app::Config {
            gateway: "127.0.0.1:0".parse().unwrap(),
            auth: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            ..config
        })
        .await
        .expect("the reference gateway starts");
        Self {
            addr: running.gateway,
            auth: running.auth,
            admin: running.admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// An access token for a demo user (the password grant, as the public
    /// `demo-cli` client).
    async fn token(&self, user: &str) -> String {
        let password = app::auth_server::USERS
            .iter()
            .find(|u| u.name == user)
            .expect("a demo user")
            .password;
        let (status, body) = self
            .send(
                Request::post(format!("http://{}/token", self.auth))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(format!(
                        "grant_type=password&client_id=demo-cli&username={user}&password={password}"
                    ))))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// GET on the admin listener.
    async fn admin_get(&self, path: &str) -> (StatusCode, Bytes) {
        let request = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
        self.send(request.body(body).unwrap()).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.client.request(request),
        )
        .await
        .expect("answered in time")
        .expect("answered");
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_authenticates_authorizes_and_forwards_over_mtls() {
    let gw = Gateway::start(1000).await;
    let user = gw.token("alice").await;
    let admin = gw.token("root").await;
    let nobody = gw.token("eve").await;

    let (s, body) = gw
        .call(
            Method::POST,
            "/orders",
            Some(&user),
            Some(r#"{"item":"book","quantity":2}"#),
        )
        .await;
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    let created: Value = serde_json::from_slice(&body).unwrap();
    // The service saw the verified subject, through the gateway and mTLS.
    assert_eq!(created["owner"], "alice");
    // The seed's bug is fixed: admins may create orders too.
    assert_eq!(
        gw.call(
            Method::POST,
            "/orders",
            Some(&admin),
            Some(r#"{"item":"pen","quantity":1}"#)
        )
        .await
        .0,
        201
    );
    assert_eq!(
        gw.call(Method::GET, "/orders", Some(&user), None).await.0,
        403
    );
    assert_eq!(
        gw.call(Method::GET, "/orders", Some(&admin), None).await.0,
        200
    );
    assert_eq!(
        gw.call(Method::GET, "/orders/1", Some(&user), None).await.0,
        200
    );
    assert_eq!(
        gw.call(Method::GET, "/orders/99", Some(&user), None)
            .await
            .0,
        404
    );
    assert_eq!(
        gw.call(Method::GET, "/inventory", Some(&nobody), None)
            .await
            .0,
        200
    );
    assert_eq!(
        gw.call(
            Method::PUT,
            "/inventory/sku-9",
            Some(&user),
            Some(r#"{"quantity":1}"#)
        )
        .await
        .0,
        403
    );
    assert_eq!(
        gw.call(
            Method::PUT,
            "/inventory/sku-9",
            Some(&admin),
            Some(r#"{"quantity":1}"#)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        gw.call(
            Method::POST,
            "/payments",
            Some(&user),
            Some(r#"{"order_id":1,"amount_cents":500}"#)
        )
        .await
        .0,
        201
    );
    assert_eq!(
        gw.call(Method::POST, "/payments", Some(&user), Some("not json"))
            .await
            .0,
        400
    );

    // Refusals at the edge.
    assert_eq!(gw.call(Method::GET, "/orders", None, None).await.0, 401);
    assert_eq!(
        gw.call(Method::GET, "/orders", Some("garbage"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        gw.call(Method::GET, "/nothing-here", Some(&admin), None)
            .await
            .0,
        404
    );
    assert_eq!(
        gw.call(Method::DELETE, "/orders", Some(&admin), None)
            .await
            .0,
        405
    );
    assert_eq!(
        gw.call(Method::GET, "/orders%2f1", Some(&admin), None)
            .await
            .0,
        400
    );
    assert_eq!(
        gw.call(Method::GET, "/public/%2e%2e/orders", Some(&user), None)
            .await
            .0,
        403
    );
    assert_eq!(gw.call(Method::GET, "/health", None, None).await.0, 200);
    // Metrics and probes are on the admin listener only.
    assert_eq!(gw.call(Method::GET, "/metrics", None, None).await.0, 404);
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    let (status, ready) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ready));
    let ready: Value = serde_json::from_slice(&ready).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["issuer_keys_loaded"], true);
    assert_eq!(ready["upstream_endpoints"]["orders"], 1);

    let (s, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(s, 200);
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains(r#"gateway_requests_total{route="/orders",method="POST",status="201"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gateway_auth_failures_total{reason="malformed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gateway_discovered_endpoints{service="orders"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_rate_limits_per_consumer() {
    let gw = Gateway::start(3).await;
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            gw.call(Method::GET, "/inventory", Some(&alice), None)
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another consumer has a quota of its own.
    assert_eq!(
        gw.call(Method::GET, "/inventory", Some(&bob), None).await.0,
        200
    );
}

/// The reference gateway's own scrape, after traffic with most outcomes,
/// passes `promtool check metrics` (Debian's `prometheus` package; under
/// `CI=true` a missing promtool fails the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_scrape_passes_promtool() {
    let promtool_installed = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("promtool").is_file()))
        .unwrap_or(false);
    if !promtool_installed {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is required under CI=true"
        );
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        return;
    }
    let gw = Gateway::start(2).await;
    let user = gw.token("alice").await;
    let admin = gw.token("root").await;
    gw.call(Method::GET, "/orders", Some(&user), None).await;
    // Past RBAC: the route's rate limit decides (and counts).
    gw.call(Method::GET, "/orders", Some(&admin), None).await;
    gw.call(Method::GET, "/orders", None, None).await;
    gw.call(Method::GET, "/orders", Some("x.y.z"), None).await;
    gw.call(Method::GET, "/nope", None, None).await;
    let request = Request::get(format!("http://{}/metrics", gw.admin))
        .header("accept", "text/plain")
        .body(Full::default())
        .unwrap();
    let (status, scrape) = gw.send(request).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&scrape).into_owned();
    assert!(text.contains("gateway_ratelimit_decisions_total"), "{text}");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// With a per-IP limit, floods of anonymous or invalid-token requests are
/// cut off before authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_caps_unauthenticated_floods() {
    let gw = Gateway::start_with(app::Config {
        per_ip_second: 3,
        ..app::Config::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            gw.call(Method::GET, "/orders", Some("x.y.z"), None)
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// The reference gateway runs with an auth-failure budget: after 30 bad
/// tokens from one address in a minute, even a valid token from it is
/// answered 429 (`auth_failure_budget`) without being verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_budgets_auth_failures_per_address() {
    let gw = Gateway::start(1000).await;
    let user = gw.token("alice").await;
    for i in 0..30 {
        let (status, _) = gw.call(Method::GET, "/orders", Some("x.y.z"), None).await;
        assert_eq!(status, 401, "bad token #{i}");
    }
    let (status, body) = gw.call(Method::GET, "/orders", Some(&user), None).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "auth_failure_budget");
    // Requests without a token are not affected.
    let (status, _) = gw.call(Method::GET, "/orders", None, None).await;
    assert_eq!(status, 401);
    // The refusal is counted with the other authentication failures.
    let (_, metrics) = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    for line in [
        r#"gateway_auth_failures_total{reason="auth_failure_budget"} 1"#,
        r#"gateway_auth_failures_total{reason="malformed"} 30"#,
    ] {
        assert!(text.contains(line), "{line} missing: {text}");
    }
}

/// The reference gateway normalizes paths in strict mode: a double-encoded
/// dot-segment is refused with 400 before routing, authentication or any
/// upstream sees it, while a single-encoded one is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_refuses_double_encoded_paths() {
    let gw = Gateway::start(1000).await;
    let admin = gw.token("root").await;
    for path in ["/public/%252e%252e/orders", "/orders/%252e%252e/payments"] {
        let (status, body) = gw.call(Method::GET, path, Some(&admin), None).await;
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "invalid_path", "{path}");
    }
    let (status, _) = gw
        .call(Method::GET, "/public/%2e%2e/orders", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_gateway_shuts_down_gracefully() {
    let running = app::start(app::Config {
        gateway: "127.0.0.1:0".parse().unwrap(),
        auth: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        ..app::Config::default()
    })
    .await
    .expect("the reference gateway starts");
    let addr = running.gateway;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(
            Request::get(format!("http://{addr}/health"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The client's pooled connection is open; shutdown closes it at once
    // (it is idle) and cuts nothing.
    let report = tokio::time::timeout(std::time::Duration::from_secs(5), running.shutdown())
        .await
        .expect("shutdown completes")
        .unwrap();
    assert_eq!((report.open, report.cut), (1, 0), "{report:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}
