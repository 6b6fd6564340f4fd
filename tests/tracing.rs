#![cfg(all(
    feature = "otel",
    feature = "jwt",
    feature = "ratelimit",
    feature = "proxy",
    feature = "server"
))]
//! Tracing over real sockets: the span tree of a request that is
//! authenticated, rate-limited and retried once, as the OpenTelemetry SDK's
//! in-memory exporter receives it; the `traceparent` the upstream got; a
//! client's trace context trusted or restarted; the request ID.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use opentelemetry::{
    Value,
    trace::{SpanKind, TracerProvider as _},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::{
    auth::{Issuer, JwtAuthLayer, JwtKey},
    discovery::{Endpoint, StaticDiscovery},
    proxy::{Balancer, Proxy, Upstream},
    ratelimit::{Consumer, Limit, RateLimitLayer, RouteRateLimitLayer},
    route::{Route, RouteLayer, Routes},
    server,
    trace::{ClientContext, RequestIdLayer, TraceLayer},
};
use tracing_subscriber::layer::SubscriberExt;

const SECRET: &[u8] = b"a-32-byte-secret-from-your-vault";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The headers of every request the upstream received.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn upstream(seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(move |request: Request<server::Body>| {
        seen.lock().unwrap().push(request.headers().clone());
        async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
        }
    });
    tokio::spawn(server::serve(listener, svc).into_future());
    addr
}

/// A loopback port nothing listens on: connections are refused.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A gateway for `GET /orders`: JWT auth, a per-consumer limit, and a proxy
/// to two endpoints tried in turn, the first refusing connections — so the
/// first request is retried once.
async fn gateway(seen: Seen, context: ClientContext, trust_ids: bool) -> SocketAddr {
    sampled_gateway(seen, context, trust_ids, 1.0).await
}

/// [`gateway`], sampling `ratio` of the requests in the `TraceLayer`.
async fn sampled_gateway(
    seen: Seen,
    context: ClientContext,
    trust_ids: bool,
    ratio: f64,
) -> SocketAddr {
    let live = upstream(seen).await;
    let discovery = StaticDiscovery::new([
        Endpoint::new("a-dead", "127.0.0.1", dead_port().await),
        Endpoint::new("b-live", "127.0.0.1", live.port()),
    ]);
    let app = Upstream::new("orders", discovery.watch())
        .balancer(Balancer::RoundRobin)
        .build()
        .unwrap();
    let limit = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_second(100))
        .build()
        .unwrap();
    let routes = Routes::builder()
        .route(
            Route::exact("/orders")
                .methods([Method::GET])
                .upstream(app)
                .rate_limit(&limit),
        )
        .build()
        .unwrap();
    let auth = JwtAuthLayer::builder()
        .issuer(Issuer::new("https://example.com").key(JwtKey::hmac(SECRET)))
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RequestIdLayer::new().trust_incoming(trust_ids))
        .layer(RouteLayer::new(&routes))
        .layer(
            TraceLayer::new()
                .client_context(context)
                .sample_ratio(ratio),
        )
        .layer(auth)
        .layer(RouteRateLimitLayer::new())
        .service(Proxy::new(&routes));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, stack).into_future());
    addr
}

fn token(sub: &str) -> String {
    tower_gateway::auth::install_crypto_backend();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": "https://example.com", "sub": sub, "iat": now, "exp": now + 600});
    let key = EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn get(addr: SocketAddr, bearer: bool, extra: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::get(format!("http://{addr}/orders"));
    if bearer {
        request = request.header("authorization", format!("Bearer {}", token("alice")));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request.body(Full::default()).unwrap()),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A tracer provider exporting to memory, its subscriber the default for
/// this thread (the current-thread runtime runs every task on it).
fn tracing() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

/// The finished spans, once the server span has ended (it ends when the
/// server drops the response future, around when the client gets it).
async fn spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let spans = exporter.get_finished_spans().unwrap();
            if spans.iter().any(|s| s.span_kind == SpanKind::Server) {
                return spans;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the server span ended")
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

fn server_span(spans: &[SpanData]) -> &SpanData {
    let mut servers = spans.iter().filter(|s| s.span_kind == SpanKind::Server);
    let server = servers.next().expect("a server span");
    assert!(servers.next().is_none(), "one server span per request");
    server
}

/// The `traceparent` the upstream received: (trace id, parent span id).
fn upstream_parent(seen: &Seen) -> (String, String) {
    let seen = seen.lock().unwrap();
    let headers = seen.last().expect("the upstream got the request");
    let value = headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn authenticated_rate_limited_retried_request_is_one_trace() {
    let (exporter, _guard) = tracing();
    let seen = Seen::default();
    let gw = gateway(seen.clone(), ClientContext::Restart, false).await;
    let reply = get(gw, true, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let spans = spans(&exporter).await;

    let server = server_span(&spans);
    assert_eq!(server.name, "GET /orders");
    let trace_id = server.span_context.trace_id();
    assert_eq!(
        attr_str(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(attr_str(server, "http.route").as_deref(), Some("/orders"));
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(
        attr_str(server, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attr_str(server, "gateway.auth.result").as_deref(),
        Some("authenticated")
    );
    assert_eq!(
        attr_str(server, "gateway.ratelimit.decision").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        attr(server, "gateway.ratelimit.fallback"),
        Some(&Value::Bool(false))
    );
    assert!(attr_str(server, "gateway.ratelimit.window").is_some());
    // The consumer stays out unless asked for.
    assert!(attr(server, "enduser.id").is_none());
    let request_id = attr_str(server, "gateway.request_id").expect("the request ID");
    assert_eq!(reply.headers["x-request-id"], request_id.as_str());

    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 2, "one retry: {attempts:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.span_context.trace_id(), trace_id);
        assert_eq!(attempt.parent_span_id, server.span_context.span_id());
        assert_eq!(attempt.name, "GET");
        assert_eq!(
            attr_str(attempt, "gateway.upstream").as_deref(),
            Some("orders")
        );
        assert_eq!(
            attr_str(attempt, "server.address").as_deref(),
            Some("127.0.0.1")
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(
        attr_str(first, "gateway.endpoint").as_deref(),
        Some("a-dead")
    );
    assert_eq!(attr_str(first, "error.type").as_deref(), Some("connect"));
    assert!(attr(first, "http.request.resend_count").is_none());
    assert_eq!(
        attr_str(second, "gateway.endpoint").as_deref(),
        Some("b-live")
    );
    assert_eq!(
        attr(second, "http.request.resend_count"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attr(second, "http.response.status_code"),
        Some(&Value::I64(200))
    );

    // The upstream continues the trace under the attempt that reached it.
    let (upstream_trace, upstream_parent) = upstream_parent(&seen);
    assert_eq!(upstream_trace, trace_id.to_string());
    assert_eq!(upstream_parent, second.span_context.span_id().to_string());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0]["x-request-id"], request_id.as_str());
}

#[tokio::test]
async fn a_trusted_client_context_is_continued() {
    let (exporter, _guard) = tracing();
    let seen = Seen::default();
    let gw = gateway(seen.clone(), ClientContext::Trust, false).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(gw, true, &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let spans = spans(&exporter).await;
    let server = server_span(&spans);
    assert_eq!(server.span_context.trace_id().to_string(), CLIENT_TRACE);
    assert_eq!(server.parent_span_id.to_string(), CLIENT_SPAN);
    assert!(server.parent_span_is_remote);
    let (trace, parent) = upstream_parent(&seen);
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(
        parent, CLIENT_SPAN,
        "the upstream's parent is the gateway's attempt"
    );
}

#[tokio::test]
async fn a_restarted_client_context_is_only_linked_and_never_forwarded() {
    let (exporter, _guard) = tracing();
    let seen = Seen::default();
    let gw = gateway(seen.clone(), ClientContext::Restart, false).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(
        gw,
        true,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=client"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let spans = spans(&exporter).await;
    let server = server_span(&spans);
    let trace_id = server.span_context.trace_id().to_string();
    assert_ne!(trace_id, CLIENT_TRACE);
    assert!(!server.parent_span_id.to_string().ends_with(CLIENT_SPAN));
    let links = &server.links.links;
    assert_eq!(links.len(), 1, "the client's context is linked");
    assert_eq!(links[0].span_context.trace_id().to_string(), CLIENT_TRACE);
    let (trace, _) = upstream_parent(&seen);
    assert_eq!(trace, trace_id);
    let seen = seen.lock().unwrap();
    assert!(
        !seen[0].contains_key("tracestate"),
        "the client's tracestate is dropped"
    );
}

#[tokio::test]
async fn request_ids_are_generated_or_trusted_echoed_and_in_problem_json() {
    let (_exporter, _guard) = tracing();
    let seen = Seen::default();
    // Not trusted: a client's ID is replaced.
    let gw = gateway(seen.clone(), ClientContext::Restart, false).await;
    let reply = get(gw, true, &[("x-request-id", "client-chosen")]).await;
    let generated = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, "client-chosen");
    assert_eq!(generated.len(), 32);
    assert_eq!(
        seen.lock().unwrap().last().unwrap()["x-request-id"],
        generated.as_str()
    );

    // Trusted: a valid ID is kept, an invalid one replaced.
    let gw = gateway(seen.clone(), ClientContext::Restart, true).await;
    let reply = get(gw, true, &[("x-request-id", "client-chosen")]).await;
    assert_eq!(reply.headers["x-request-id"], "client-chosen");
    assert_eq!(
        seen.lock().unwrap().last().unwrap()["x-request-id"],
        "client-chosen"
    );
    let long = "a".repeat(129);
    let reply = get(gw, true, &[("x-request-id", &long)]).await;
    assert_eq!(reply.headers["x-request-id"].len(), 32);

    // A refusal carries the ID in its problem document.
    let reply = get(gw, false, &[("x-request-id", "refused-1")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["x-request-id"], "refused-1");
    let problem: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["request_id"], "refused-1");
}

/// The full `traceparent` the upstream last received.
fn upstream_traceparent(seen: &Seen) -> String {
    let seen = seen.lock().unwrap();
    let headers = seen.last().expect("the upstream got the request");
    headers["traceparent"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_unsampled_request_opens_no_span_and_tells_the_upstream() {
    let (exporter, _guard) = tracing();
    let seen = Seen::default();
    let gw = sampled_gateway(seen.clone(), ClientContext::Restart, false, 0.0).await;
    // Retried once (the dead endpoint first), authenticated, rate-limited:
    // every layer that would record runs, and nothing is recorded.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(gw, true, &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "no span for an unsampled request"
    );
    let sent = upstream_traceparent(&seen);
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[3], "00", "the sampled flag is off: {sent}");
    assert_ne!(parts[1], CLIENT_TRACE, "the client's trace is not joined");
    // Each request gets a trace of its own.
    get(gw, true, &[]).await;
    assert_ne!(upstream_traceparent(&seen), sent);
}

#[tokio::test]
async fn a_trusted_parent_decides_sampling() {
    let (exporter, _guard) = tracing();
    let seen = Seen::default();
    let gw = sampled_gateway(seen.clone(), ClientContext::Trust, false, 0.0).await;
    // Not sampled by the client: no span, its context passes on unchanged.
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let reply = get(gw, true, &[("traceparent", &unsampled)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    assert_eq!(upstream_traceparent(&seen), unsampled);
    // Sampled by the client: traced, although the layer's ratio is 0.
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(gw, true, &[("traceparent", &sampled)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let spans = spans(&exporter).await;
    assert_eq!(
        server_span(&spans).span_context.trace_id().to_string(),
        CLIENT_TRACE
    );
}
