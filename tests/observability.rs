#![cfg(all(
    feature = "metrics",
    feature = "jwt",
    feature = "rbac",
    feature = "ratelimit",
    feature = "proxy"
))]
//! The observability assets in `examples/observability/` against a real
//! gateway: an in-process axum gateway (metrics, JWT auth, RBAC, a circuit
//! breaker) driven over loopback HTTP, its exposition checked with
//! `promtool`, the alert rules and dashboard queries parsed by `promtool` and
//! matched against the metric names the gateway really exports, and a real
//! Prometheus server scraping the gateway.
//!
//! `promtool` and `prometheus` must be on the `PATH`: without them each test
//! prints `SKIPPED: ...` and passes, except under `CI=true`, where it fails.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::{MatchedPath, Path as UrlPath},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tower::ServiceBuilder;
use tower_gateway::{
    auth::{AuthMetrics, Issuer, JwtAuthLayer, JwtKey},
    circuit::{CircuitBreakerLayer, CircuitConfig, CircuitMetrics, Window},
    discovery::DiscoveryMetrics,
    metrics::{
        GatewayMetrics, MetricsHandler, MetricsLayer, OPENMETRICS_CONTENT_TYPE,
        PROMETHEUS_TEXT_CONTENT_TYPE,
    },
    proxy::UpstreamMetrics,
    ratelimit::{RateLimitMetrics, RateLimitOutcome},
    rbac::{Policy, RbacLayer, RbacMetrics, Rule},
    route::RouteTemplate,
};

/// Upper bound on one HTTP exchange with the gateway or Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on waiting for Prometheus (start, first scrape, query).
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Tools and temporary files

/// Whether `bin` is installed. When it is not: under `CI=true` the test
/// fails; elsewhere it says so loudly and the caller returns early.
fn require(bin: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{bin} is not installed, and CI=true requires it (apt-get install prometheus)");
    }
    eprintln!(
        "SKIPPED: {bin} not installed (apt-get install prometheus); this test checked nothing"
    );
    false
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tower-gateway-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `promtool` with `args` (and `stdin`); returns (success, stdout,
/// stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin");
        pipe.write_all(input.as_bytes()).expect("write to promtool");
        // Dropping the pipe closes it: promtool reads to end of input.
    }
    let output = child.wait_with_output().expect("wait for promtool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// The gateway

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Gateway {
    addr: SocketAddr,
    metrics: GatewayMetrics,
    client: HttpClient,
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// gRPC over HTTP: a trailers-only answer, `OK` for `GetOrder` and
/// `UNIMPLEMENTED` for anything else.
async fn grpc_handler(UrlPath(method): UrlPath<String>) -> Response {
    let status = if method == "GetOrder" { "0" } else { "12" };
    (
        [
            (header::CONTENT_TYPE, "application/grpc"),
            (header::HeaderName::from_static("grpc-status"), status),
        ],
        "",
    )
        .into_response()
}

/// An axum gateway on a free loopback port: `MetricsLayer` outermost (route
/// label from axum's `MatchedPath`), then `JwtAuthLayer` and `RbacLayer`,
/// a circuit breaker on `/flaky` (whose handler always fails with 500), and
/// `/metrics` outside every layer. Lives as long as the test's runtime.
async fn start_gateway() -> Gateway {
    let metrics = GatewayMetrics::default();
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(support::ISSUER)
                .audience(support::AUDIENCE)
                .key(JwtKey::hmac(support::HMAC_SECRET)),
        )
        .metrics(AuthMetrics::new(&metrics))
        .build()
        .expect("auth layer");
    let policy = Policy::builder()
        .rule(
            Rule::new("/orders")
                .methods([Method::DELETE])
                .any_of(["admin"])
                .name("orders-delete"),
        )
        .rule(Rule::new("/orders").any_of(["user"]).name("orders"))
        .rule(
            Rule::new("/orders.v1.OrderService")
                .any_of(["user"])
                .name("orders-grpc"),
        )
        .rule(Rule::new("/flaky").authenticated().name("flaky"))
        .build()
        .expect("policy");
    let rbac = RbacLayer::new(policy).metrics(RbacMetrics::new(&metrics));
    let breaker = CircuitBreakerLayer::new(
        "inventory",
        CircuitConfig::default()
            .window(Window::Count(10))
            .minimum_calls(3)
            .consecutive_failures(Some(3))
            // Long enough that it stays open for the whole test.
            .open_duration(Duration::from_secs(300), Duration::from_secs(300)),
    )
    .metrics(CircuitMetrics::new(&metrics));

    let app = Router::new()
        .route("/orders", get(|| async { "[]" }))
        .route(
            "/orders/{id}",
            get(|| async { "{}" }).delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/flaky",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }).layer(breaker),
        )
        .route("/orders.v1.OrderService/{method}", post(grpc_handler))
        .layer(ServiceBuilder::new().layer(auth).layer(rbac))
        .layer(MetricsLayer::new(&metrics).route_from(|parts| {
            parts
                .extensions
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_owned())
        }))
        .route_service("/metrics", MetricsHandler::new(&metrics));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Gateway {
        addr,
        metrics,
        client: client(),
    }
}

/// One HTTP exchange with a deadline: (status, headers, body).
async fn exchange(client: &HttpClient, request: Request<Full<Bytes>>) -> (u16, HeaderMap, String) {
    let what = format!("{} {}", request.method(), request.uri());
    let fut = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
            parts.status.as_u16(),
            parts.headers,
            body,
        ))
    };
    match tokio::time::timeout(HTTP_TIMEOUT, fut).await {
        Ok(Ok((status, headers, body))) => {
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: timed out"),
    }
}

/// GET `/metrics` with an optional `Accept` header: (content type, body).
async fn scrape(gw: &Gateway, accept: Option<&str>) -> (String, String) {
    let mut request = Request::get(format!("http://{}/metrics", gw.addr));
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let (status, headers, body) =
        exchange(&gw.client, request.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (content_type, body)
}

/// Requests the test sent and their expected labels:
/// (route template, method, status) → count.
type Sent = BTreeMap<(String, String, u16), u64>;

/// The credentials a request of the plan carries.
#[derive(Debug, Clone, Copy)]
enum Token {
    None,
    User,
    Expired,
    Garbage,
}

const GRPC_ROUTE: &str = "/orders.v1.OrderService/{method}";

/// The traffic: (count, method, path, token, route label the gateway must
/// use, expected status). Requests on `GRPC_ROUTE` are sent as gRPC.
const PLAN: &[(u64, &str, &str, Token, &str, u16)] = &[
    // 200
    (5, "GET", "/orders", Token::User, "/orders", 200),
    (3, "GET", "/orders/7", Token::User, "/orders/{id}", 200),
    // 401: no token, an expired one, garbage.
    (2, "GET", "/orders", Token::None, "/orders", 401),
    (2, "GET", "/orders", Token::Expired, "/orders", 401),
    (2, "GET", "/orders", Token::Garbage, "/orders", 401),
    // 403: DELETE is for admins.
    (2, "DELETE", "/orders/7", Token::User, "/orders/{id}", 403),
    // 400: an encoded slash is refused by RBAC's path normalization.
    (2, "GET", "/orders/a%2Fb", Token::User, "/orders/{id}", 400),
    // 404: no route; the fallback is labelled `unmatched`.
    (2, "GET", "/nope", Token::User, "unmatched", 404),
    // 5xx: three failures in a row trip the breaker, then it answers 503.
    (3, "GET", "/flaky", Token::User, "/flaky", 500),
    (2, "GET", "/flaky", Token::User, "/flaky", 503),
    // gRPC: OK and UNIMPLEMENTED, both over HTTP 200.
    (
        3,
        "POST",
        "/orders.v1.OrderService/GetOrder",
        Token::User,
        GRPC_ROUTE,
        200,
    ),
    (
        1,
        "POST",
        "/orders.v1.OrderService/Missing",
        Token::User,
        GRPC_ROUTE,
        200,
    ),
];

/// Sends the plan's requests, asserting each status, then feeds the events
/// no layer reports yet; returns what was sent.
async fn drive(gw: &Gateway) -> Sent {
    let user = support::mint(Algorithm::HS256, None, &support::claims("alice", &["user"]));
    let mut old = support::claims("bob", &["user"]);
    old["iat"] = (support::now() - 7200).into();
    old["exp"] = (support::now() - 3600).into();
    let expired = support::mint(Algorithm::HS256, None, &old);

    let mut sent = Sent::new();
    for &(count, method, path, token, route, status) in PLAN {
        let authorization = match token {
            Token::None => None,
            Token::User => Some(format!("Bearer {user}")),
            Token::Expired => Some(format!("Bearer {expired}")),
            Token::Garbage => Some("Bearer not-a-token".to_owned()),
        };
        for _ in 0..count {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", gw.addr));
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let body = if route == GRPC_ROUTE {
                request = request
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .header(header::TE, "trailers");
                // One empty gRPC message: uncompressed, zero length.
                Bytes::from_static(&[0, 0, 0, 0, 0])
            } else {
                Bytes::new()
            };
            let (got, _, text) = exchange(&gw.client, request.body(Full::new(body)).unwrap()).await;
            assert_eq!(got, status, "{method} {path} ({token:?}): {text}");
        }
        *sent
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += count;
    }

    // The layers these events come from are not in this gateway (rate
    // limiting, service discovery and the upstream client), and the JWKS
    // refresher only runs against a JWKS server, so they are recorded
    // through the same handles those layers use, so that every family the
    // alerts and the dashboard query has samples.
    let ratelimit = RateLimitMetrics::new(&gw.metrics);
    let orders = RouteTemplate::new("/orders");
    for outcome in [
        RateLimitOutcome::Allowed,
        RateLimitOutcome::Allowed,
        RateLimitOutcome::Limited,
        RateLimitOutcome::BackendError,
        RateLimitOutcome::Fallback,
    ] {
        ratelimit.decision(Some(&orders), outcome);
    }
    let discovery = DiscoveryMetrics::new(&gw.metrics);
    let upstreams = UpstreamMetrics::new(&gw.metrics);
    for (service, endpoints, stale_ms, latency_ms) in [
        ("orders", 2, 1500, 12),
        ("payments", 1, 250, 40),
        ("inventory", 0, 90_000, 3),
    ] {
        let discovered = discovery.service(service);
        discovered.endpoints(endpoints);
        discovered.staleness(Duration::from_millis(stale_ms));
        upstreams
            .service(service)
            .record(Duration::from_millis(latency_ms));
    }
    let jwks = AuthMetrics::new(&gw.metrics).jwks(support::ISSUER);
    jwks.refreshed(true);
    jwks.refreshed(false);
    sent
}

// ---------------------------------------------------------------------------
// Expositions

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `name{a="x",b="y"} value` (labels optional, value escapes `\\ \" \n`).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = r[..eq].trim().to_owned();
            r = r[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                    '"' => break i,
                    c => value.push(c),
                }
            };
            r = &r[end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line: {l:?}")))
        .collect()
}

/// The sum of the samples named `name` whose labels include `filter`.
fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

// ---------------------------------------------------------------------------
// PromQL in the assets

/// The `expr` values of a Prometheus rule file: inline (plain or quoted) and
/// block scalars (`expr: |`, `expr: >`), whose lines are those indented
/// deeper than the key.
fn yaml_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let key = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(value) = key.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let content = l.trim_start();
                if !content.is_empty() && l.len() - content.len() <= indent {
                    break;
                }
                block.push(content.trim_end());
                i += 1;
            }
            exprs.push(block.join("\n").trim().to_owned());
        } else if let Some(quoted) = value.strip_prefix('\'') {
            let inner = quoted.strip_suffix('\'').expect("closing quote");
            exprs.push(inner.replace("''", "'"));
        } else if value.starts_with('"') {
            exprs.push(serde_json::from_str(value).expect("double-quoted expr"));
        } else {
            exprs.push(value.to_owned());
        }
    }
    exprs
}

/// Every `expr` of every target of every panel (rows' nested panels too).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(targets)) = map.get("targets") {
                    for target in targets {
                        let expr = target["expr"].as_str().expect("every target has an expr");
                        out.push(expr.to_owned());
                    }
                }
                if let Some(Value::Array(panels)) = map.get("panels") {
                    for panel in panels {
                        walk(panel, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Grafana's variables replaced so that Prometheus can parse the query:
/// interval variables by durations, any other `$var` / `${var}` (only ever
/// used inside `=~"..."` matchers) by `.*`.
fn grafana_to_promql(expr: &str) -> String {
    let mut expr = expr
        .replace("$__rate_interval", "5m")
        .replace("${__rate_interval}", "5m")
        .replace("$__interval", "1m")
        .replace("${__interval}", "1m")
        .replace("$__range", "1h")
        .replace("${__range}", "1h");
    let mut out = String::with_capacity(expr.len());
    while let Some(at) = expr.find('$') {
        out.push_str(&expr[..at]);
        let rest = &expr[at + 1..];
        let skip = if let Some(braced) = rest.strip_prefix('{') {
            braced.find('}').map(|end| end + 2).unwrap_or(rest.len())
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        out.push_str(".*");
        expr = rest[skip..].to_owned();
    }
    out.push_str(&expr);
    out
}

/// The `gateway_*` identifiers in a PromQL expression, skipping string
/// literals (label values) so only metric names are taken.
fn gateway_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut outside = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                outside.push(' ');
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                outside.push(' ');
            }
            None => outside.push(c),
        }
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = outside.as_str();
    while let Some(at) = rest.find("gateway_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(ident) {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Names referenced by `exprs` that are not sample names of the exposition.
fn unknown_names(exprs: &[String], exported: &BTreeSet<String>) -> Vec<(String, String)> {
    exprs
        .iter()
        .flat_map(|expr| {
            gateway_names(expr)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(move |name| (name, expr.clone()))
        })
        .collect()
}

/// Writes `exprs` as recording rules and runs `promtool check rules` on
/// them: (success, output).
fn check_exprs_with_promtool(exprs: &[String]) -> (bool, String) {
    let dir = TempDir::new("exprs");
    let mut rules = String::from("groups:\n  - name: expressions\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: check:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = dir.path().join("exprs.yml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, stdout, stderr) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    (ok, format!("{stdout}{stderr}\n--- rules ---\n{rules}"))
}

// ---------------------------------------------------------------------------
// Tests

/// Test 1: the Prometheus text exposition passes `promtool check metrics`
/// without a complaint, and the default (OpenMetrics) one is well formed and
/// carries the same samples.
#[tokio::test]
async fn exposition_passes_promtool_check_metrics() {
    if !require("promtool") {
        return;
    }
    let gw = start_gateway().await;
    drive(&gw).await;

    let (content_type, text) = scrape(&gw, Some("text/plain")).await;
    assert_eq!(content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
    let (ok, stdout, stderr) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics complained:\nstdout: {stdout}\nstderr: {stderr}\n--- exposition ---\n{text}"
    );

    let (content_type, openmetrics) = scrape(&gw, None).await;
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        openmetrics.trim_end().ends_with("# EOF") && openmetrics.ends_with('\n'),
        "OpenMetrics must end with # EOF:\n{openmetrics}"
    );
    // Nothing between the two scrapes changed the counters: both formats
    // carry the very same samples.
    assert_eq!(parse_exposition(&openmetrics), parse_exposition(&text));
}

/// Test 2: the counters equal the requests sent, per route, method and
/// status, and the layers' own events are counted.
#[tokio::test]
async fn counters_equal_requests_sent() {
    let gw = start_gateway().await;
    let sent = drive(&gw).await;
    let (_, text) = scrape(&gw, Some("text/plain")).await;
    let samples = parse_exposition(&text);

    for ((route, method, status), count) in &sent {
        let status = status.to_string();
        let labels = [
            ("route", route.as_str()),
            ("method", method.as_str()),
            ("status", status.as_str()),
        ];
        let got = sum(&samples, "gateway_requests_total", &labels);
        assert_eq!(got, *count as f64, "{labels:?}\n{text}");
    }
    let total: u64 = sent.values().sum();
    // No other series: `/metrics` itself is outside the layer.
    assert_eq!(
        sum(&samples, "gateway_requests_total", &[]),
        total as f64,
        "{text}"
    );
    assert_eq!(
        sum(&samples, "gateway_request_duration_seconds_count", &[]),
        total as f64
    );
    let per_route = |route: &str| -> u64 {
        sent.iter()
            .filter(|((r, _, _), _)| r == route)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(
        sum(
            &samples,
            "gateway_request_duration_seconds_bucket",
            &[("route", "/orders"), ("le", "+Inf")]
        ),
        per_route("/orders") as f64
    );
    assert_eq!(sum(&samples, "gateway_requests_in_flight", &[]), 0.0);

    // 401s by reason: 2 missing, 2 expired, 2 garbage.
    let auth = |reason| {
        sum(
            &samples,
            "gateway_auth_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(auth("missing"), 2.0, "{text}");
    assert_eq!(auth("expired"), 2.0, "{text}");
    assert_eq!(
        sum(&samples, "gateway_auth_failures_total", &[]),
        6.0,
        "{text}"
    );
    // 403s by rule.
    assert_eq!(
        sum(
            &samples,
            "gateway_rbac_denials_total",
            &[("rule", "orders-delete"), ("mode", "enforce")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(sum(&samples, "gateway_rbac_denials_total", &[]), 2.0);
    // The breaker tripped once and is open.
    let state = |s| {
        sum(
            &samples,
            "gateway_circuit_state",
            &[("upstream", "inventory"), ("state", s)],
        )
    };
    assert_eq!(
        (state("closed"), state("open"), state("half_open")),
        (0.0, 1.0, 0.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &samples,
            "gateway_circuit_transitions_total",
            &[
                ("upstream", "inventory"),
                ("from", "closed"),
                ("to", "open")
            ]
        ),
        1.0,
        "{text}"
    );
    // gRPC calls by final status.
    let grpc = |method, status| {
        sum(
            &samples,
            "gateway_grpc_requests_total",
            &[
                ("grpc_service", "orders.v1.OrderService"),
                ("grpc_method", method),
                ("grpc_status", status),
            ],
        )
    };
    assert_eq!(grpc("GetOrder", "OK"), 3.0, "{text}");
    assert_eq!(grpc("Missing", "UNIMPLEMENTED"), 1.0, "{text}");
    // The events fed by hand.
    let decisions = |outcome| {
        sum(
            &samples,
            "gateway_ratelimit_decisions_total",
            &[("route", "/orders"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        ["allowed", "limited", "backend_error", "fallback"].map(decisions),
        [2.0, 1.0, 1.0, 1.0]
    );
    assert_eq!(
        sum(
            &samples,
            "gateway_discovered_endpoints",
            &[("service", "orders")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &samples,
            "gateway_discovery_staleness_seconds",
            &[("service", "inventory")]
        ),
        90.0
    );
    assert_eq!(
        sum(
            &samples,
            "gateway_jwks_refreshes_total",
            &[("result", "failure")]
        ),
        1.0
    );
}

/// Test 3: the shipped rules and configuration pass promtool, and every
/// alert has a `for`, a severity and a summary.
#[test]
fn alert_rules_and_config_pass_promtool() {
    if !require("promtool") {
        return;
    }
    let alerts = repo_file("examples/observability/alerts.yml");
    let (ok, stdout, stderr) = promtool(&["check", "rules", alerts.to_str().unwrap()], None);
    assert!(ok, "promtool check rules:\n{stdout}{stderr}");
    let config = repo_file("examples/observability/prometheus.yml");
    let (ok, stdout, stderr) = promtool(&["check", "config", config.to_str().unwrap()], None);
    assert!(ok, "promtool check config:\n{stdout}{stderr}");

    let text = read_repo_file("examples/observability/alerts.yml");
    let blocks: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert!(
        blocks.len() >= 6,
        "expected the six gateway alerts at least"
    );
    for block in blocks {
        let name = block.split_whitespace().next().unwrap_or_default();
        for needle in ["expr:", "for:", "severity:", "summary:"] {
            assert!(block.contains(needle), "alert {name} has no `{needle}`");
        }
    }
    for metric in [
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_circuit_state",
        "gateway_ratelimit_decisions_total",
        "gateway_discovery_staleness_seconds",
        "gateway_jwks_refreshes_total",
    ] {
        assert!(text.contains(metric), "no alert on {metric}");
    }
}

/// Test 4: every PromQL expression of the alerts and the dashboard parses
/// (as a recording rule under `promtool check rules`) and names only metrics
/// that the gateway exports.
#[tokio::test]
async fn every_query_parses_and_names_exported_metrics() {
    if !require("promtool") {
        return;
    }
    let alerts_yml = read_repo_file("examples/observability/alerts.yml");
    let alert_exprs = yaml_exprs(&alerts_yml);
    let rule_count = alerts_yml
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert_eq!(alert_exprs.len(), rule_count, "an expr was missed");
    assert!(alert_exprs.iter().all(|e| !e.is_empty()));

    let dashboard: Value = serde_json::from_str(&read_repo_file(
        "examples/observability/grafana-dashboard.json",
    ))
    .expect("the dashboard is JSON");
    check_dashboard_shape(&dashboard);
    let dashboard_exprs: Vec<String> = dashboard_exprs(&dashboard)
        .iter()
        .map(|e| grafana_to_promql(e))
        .collect();
    assert!(dashboard_exprs.len() >= 10, "{dashboard_exprs:?}");

    let all: Vec<String> = alert_exprs.into_iter().chain(dashboard_exprs).collect();
    let (ok, output) = check_exprs_with_promtool(&all);
    assert!(ok, "a PromQL expression does not parse:\n{output}");

    // The sample names of a real exposition, every family populated.
    let gw = start_gateway().await;
    drive(&gw).await;
    let (_, text) = scrape(&gw, Some("text/plain")).await;
    let exported: BTreeSet<String> = parse_exposition(&text)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let unknown = unknown_names(&all, &exported);
    assert!(
        unknown.is_empty(),
        "metrics not in the gateway's exposition: {unknown:#?}\nexported: {exported:#?}"
    );
    // The dashboard's variable queries too.
    let variables = dashboard["templating"]["list"].to_string();
    let unknown = unknown_names(&[variables], &exported);
    assert!(unknown.is_empty(), "{unknown:#?}");

    // The checks are not vacuous: a typo'd metric and a broken expression
    // are both caught.
    let typo = vec!["sum(rate(gateway_request_total[5m]))".to_owned()];
    assert_eq!(unknown_names(&typo, &exported).len(), 1);
    assert_eq!(
        gateway_names(r#"rate(gateway_requests_total{route="gateway_x"}[1m])"#),
        BTreeSet::from(["gateway_requests_total".to_owned()])
    );
    let (ok, _) = check_exprs_with_promtool(&["sum(rate(gateway_requests_total[5m])".to_owned()]);
    assert!(!ok, "promtool accepted an unbalanced expression");
}

/// The dashboard is one Grafana can import: schema, data source variable,
/// unique panel ids, and the panels the gateway's operators look at.
fn check_dashboard_shape(dashboard: &Value) {
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let text = dashboard.to_string();
    let datasource_variable = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    assert!(
        datasource_variable || text.contains("${DS_PROMETHEUS}"),
        "no Prometheus data source variable or input"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "panel {id}: gridPos.{key}");
        }
        if panel["type"] != "row" {
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {id} has no query"
            );
        }
    }
    let exprs = dashboard_exprs(dashboard).join("\n");
    for needle in [
        "gateway_requests_total",
        "status=~\"5..\"",
        "status=\"429\"",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "gateway_auth_failures_total",
        "gateway_circuit_state",
        "gateway_discovered_endpoints",
        "gateway_ratelimit_decisions_total",
        "gateway_grpc_requests_total",
    ] {
        assert!(exprs.contains(needle), "no dashboard query with {needle}");
    }
}

/// A Prometheus server, killed (and its files removed) on drop, also when
/// the test panics.
struct PrometheusServer {
    child: Child,
    dir: TempDir,
    base: String,
}

impl PrometheusServer {
    fn start(target: SocketAddr) -> Self {
        let dir = TempDir::new("prometheus");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let alerts = repo_file("examples/observability/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {alerts:?}\n\
             scrape_configs:\n  - job_name: gateway\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what} within {PROMETHEUS_DEADLINE:?}\n--- prometheus log ---\n{}",
            self.log()
        )
    }

    /// GET an API path; `None` while the server is not answering.
    async fn api(&self, client: &HttpClient, path_and_query: &str) -> Option<Value> {
        let request = Request::get(format!("{}{path_and_query}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = async {
            let response = client.request(request).await.ok()?;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<Value>(&body).ok()
        };
        tokio::time::timeout(HTTP_TIMEOUT, fut).await.ok().flatten()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Test 5: a real Prometheus scrapes the gateway and counts exactly the
/// requests the test sent to a route; the shipped alert rules load and
/// evaluate without error on the scraped data.
#[tokio::test]
async fn prometheus_scrapes_the_gateway() {
    if !require("prometheus") {
        return;
    }
    let gw = start_gateway().await;
    let sent = drive(&gw).await;
    let route = "/orders";
    let expected: u64 = sent
        .iter()
        .filter(|((r, _, _), _)| r == route)
        .map(|(_, n)| n)
        .sum();
    assert!(expected > 0);

    let server = PrometheusServer::start(gw.addr);
    let client = client();
    let started = Instant::now();
    let deadline = started + PROMETHEUS_DEADLINE;
    let pause = Duration::from_millis(250);

    // The target is up.
    let target = format!("http://{}/metrics", gw.addr);
    loop {
        let up = server
            .api(&client, "/api/v1/targets")
            .await
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .is_some_and(|targets| {
                targets
                    .iter()
                    .any(|t| t["scrapeUrl"] == target.as_str() && t["health"] == "up")
            });
        if up {
            break;
        }
        if Instant::now() >= deadline {
            server.fail("the gateway target never became up");
        }
        tokio::time::sleep(pause).await;
    }

    // The scraped counter equals what was sent.
    let query = format!("sum(gateway_requests_total{{route=\"{route}\"}})");
    let path = format!("/api/v1/query?query={}", encode_query(&query));
    loop {
        let value = server.api(&client, &path).await.and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
        });
        if value == Some(expected as f64) {
            break;
        }
        if Instant::now() >= deadline {
            server.fail(&format!("{query} was {value:?}, never {expected}"));
        }
        tokio::time::sleep(pause).await;
    }

    // The shipped alert rules were loaded and evaluate cleanly.
    loop {
        let rules: Vec<Value> = server
            .api(&client, "/api/v1/rules")
            .await
            .and_then(|v| v["data"]["groups"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "rules failing to evaluate: {bad:#?}");
        if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        if Instant::now() >= deadline {
            server.fail(&format!("the alert rules never all evaluated: {rules:#?}"));
        }
        tokio::time::sleep(pause).await;
    }
    drop(server);
}
