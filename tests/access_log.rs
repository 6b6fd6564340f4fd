//! The access log: one event per request at target `tower_gateway::access`,
//! written when the response body ends, with the fields a user greps for.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::{
    Identity,
    access_log::{AccessLogLayer, TARGET, UpstreamCall},
    identity::RoleSource,
    reject::{Rejection, RequestHead},
    route::{Route, RouteLayer, Routes},
};
use tracing::field::{Field, Visit};
use tracing_subscriber::{Layer, layer::SubscriberExt};

type Fields = HashMap<String, String>;

/// Records every event of the access-log target as its fields.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

impl Capture {
    fn events(&self) -> Vec<Fields> {
        self.0.lock().unwrap().clone()
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == TARGET {
            let mut fields = Fields::new();
            event.record(&mut Visitor(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

fn subscriber(capture: &Capture) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry().with(capture.clone())
}

fn routes() -> Arc<Routes> {
    Routes::builder()
        .route(Route::prefix("/orders").name("/orders/{id}"))
        .build()
        .unwrap()
}

fn identity(subject: &str) -> Identity {
    let claims = serde_json::json!({ "sub": subject })
        .as_object()
        .unwrap()
        .clone();
    Identity::from_claims(claims, &RoleSource::claim("roles"))
}

async fn upstream(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"0123456789")));
    if request.uri().path() == "/orders/retried" {
        response.extensions_mut().insert(UpstreamCall {
            endpoint: Arc::from("10.0.0.7:8080"),
            attempts: 2,
        });
    }
    Ok(response)
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_writes_one_line_when_the_body_ends() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let routes = routes();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes))
        .layer(AccessLogLayer::new())
        .service_fn(upstream);
    let request = Request::post("/orders/7")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert!(
        capture.events().is_empty(),
        "logged before the body was sent"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 10);

    let events = capture.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["route"], "/orders/{id}");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["status"], "200");
    assert_eq!(e["request_bytes"], "3");
    assert_eq!(e["response_bytes"], "10");
    assert_eq!(e["outcome"], "complete");
    assert!(e["duration_ms"].parse::<f64>().unwrap() >= 0.0);
    for absent in ["consumer", "upstream", "attempts", "refused", "trace_id"] {
        assert!(!e.contains_key(absent), "{absent} logged: {e:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_reads_the_upstream_call_from_the_response() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let routes = routes();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes))
        .layer(AccessLogLayer::new())
        .service_fn(upstream);
    let request = Request::get("/orders/retried")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    let e = &capture.events()[0];
    assert_eq!(e["upstream"], "10.0.0.7:8080");
    assert_eq!(e["attempts"], "2");
    assert_eq!(e["request_bytes"], "0");
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_names_the_consumer_only_when_asked() {
    for record in [false, true] {
        let capture = Capture::default();
        let _guard = tracing::subscriber::set_default(subscriber(&capture));
        let svc = ServiceBuilder::new()
            .map_request(|mut request: Request<Full<Bytes>>| {
                request.extensions_mut().insert(identity("alice"));
                request
            })
            .layer(AccessLogLayer::new().record_consumer(record))
            .service_fn(upstream);
        let request = Request::get("/x").body(Full::new(Bytes::new())).unwrap();
        let response = svc.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let e = &capture.events()[0];
        assert_eq!(
            e.get("consumer").map(String::as_str),
            record.then_some("alice")
        );
        assert!(!e.contains_key("route"), "no route matched: {e:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_writes_a_refusal_with_its_head() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let (parts, _) = request.into_parts();
            let head = RequestHead::new(&parts.method, &parts.uri, &parts.headers);
            Ok::<Response<Full<Bytes>>, Infallible>(
                Rejection::forbidden("role missing").into_response(&head),
            )
        });
    let request = Request::delete("/orders/7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The render step replaces the empty body; the line is already written.
    drop(response);
    let events = capture.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], "403");
    assert_eq!(events[0]["refused"], "insufficient_role");
    assert_eq!(events[0]["outcome"], "complete");
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_marks_a_response_dropped_before_its_end() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service_fn(upstream);
    let request = Request::get("/x").body(Full::new(Bytes::new())).unwrap();
    drop(svc.oneshot(request).await.unwrap());
    let events = capture.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "aborted");
    assert_eq!(events[0]["response_bytes"], "0");
}

#[tokio::test(flavor = "current_thread")]
async fn access_log_is_silent_when_its_target_is_filtered_out() {
    let capture = Capture::default();
    let filtered = tracing_subscriber::registry().with(capture.clone().with_filter(
        tracing_subscriber::EnvFilter::new("info,tower_gateway::access=off"),
    ));
    let _guard = tracing::subscriber::set_default(filtered);
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service_fn(upstream);
    let request = Request::get("/x").body(Full::new(Bytes::new())).unwrap();
    let response = svc.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert!(capture.events().is_empty());
}

/// With feature `otel`: the trace ID of the span the request runs in.
#[cfg(feature = "otel")]
#[tokio::test(flavor = "current_thread")]
async fn access_log_carries_the_trace_id_of_the_request_span() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new())
        .service_fn(upstream);
    let span = tracing::info_span!("request");
    let expected = span.context().span().span_context().trace_id();
    let request = Request::get("/x").body(Full::new(Bytes::new())).unwrap();
    let response = svc.oneshot(request).instrument(span).await.unwrap();
    response.into_body().collect().await.unwrap();
    let events = capture.events();
    assert_eq!(events[0]["trace_id"], expected.to_string());
    assert_ne!(expected, opentelemetry::trace::TraceId::INVALID);
}

/// Through the real proxy: with `Proxy::report_upstream_calls`, the line
/// names the endpoint that answered and the attempts made.
#[cfg(feature = "proxy")]
#[tokio::test(flavor = "current_thread")]
async fn access_log_names_the_endpoint_the_proxy_reached() {
    use tower_gateway::{
        discovery::{Endpoint, StaticDiscovery},
        proxy::{Proxy, Upstream},
    };
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let echo = tower::service_fn(|_request: Request<tower_gateway::server::Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    tokio::spawn(std::future::IntoFuture::into_future(
        tower_gateway::server::serve(listener, echo),
    ));
    let instances = StaticDiscovery::new([Endpoint::new("app-1", "127.0.0.1", app.port())]);
    let routes = Routes::builder()
        .route(
            Route::prefix("/orders")
                .upstream(Upstream::new("app", instances.watch()).build().unwrap()),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(&routes))
        .layer(AccessLogLayer::new())
        .service(Proxy::new(&routes).report_upstream_calls(true));
    let response = svc
        .oneshot(
            Request::get("/orders/7")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let e = &capture.events()[0];
    assert_eq!(e["upstream"], format!("127.0.0.1:{}", app.port()));
    assert_eq!(e["attempts"], "1");
    assert_eq!(e["status"], "200");
}
