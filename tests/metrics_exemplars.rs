#![cfg(all(feature = "metrics", feature = "otel"))]
//! The request-duration histogram carries the trace ID of sampled requests
//! as an OpenMetrics exemplar — and only there: the Prometheus text format
//! stays free of them.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::metrics::{GatewayMetrics, MetricsHandler, MetricsLayer, MetricsRequestBody};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Serves one request in a span of a tracer with `sampler`; returns the
/// span's trace ID.
async fn one_request(metrics: &GatewayMetrics, sampler: Sampler) -> TraceId {
    let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics))
        .service_fn(|_req: Request<MetricsRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    let span = tracing::info_span!("request");
    let trace_id = span.context().span().span_context().trace_id();
    let request = Request::get("/orders")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).instrument(span).await.unwrap();
    response.into_body().collect().await.unwrap();
    trace_id
}

async fn scrape(metrics: &GatewayMetrics, accept: &str) -> String {
    let request = Request::get("/metrics")
        .header(header::ACCEPT, accept)
        .body(())
        .unwrap();
    let response = MetricsHandler::new(metrics).call(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn sampled_request_trace_id_is_an_exemplar_in_openmetrics_only() {
    let metrics = GatewayMetrics::default();
    let sampled = one_request(&metrics, Sampler::AlwaysOn).await;
    assert_ne!(sampled, TraceId::INVALID);

    let openmetrics = scrape(&metrics, "application/openmetrics-text; version=1.0.0").await;
    let exemplar = format!("# {{trace_id=\"{sampled}\"}}");
    let lines: Vec<&str> = openmetrics
        .lines()
        .filter(|l| l.contains(&exemplar))
        .collect();
    assert_eq!(lines.len(), 1, "one bucket keeps it:\n{openmetrics}");
    assert!(
        lines[0].starts_with("gateway_request_duration_seconds_bucket{"),
        "{}",
        lines[0]
    );

    let text = scrape(&metrics, "text/plain").await;
    assert!(text.contains("gateway_request_duration_seconds_bucket{"));
    assert!(
        !text.contains("trace_id"),
        "exemplar in the text format:\n{text}"
    );
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains('#')),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unsampled_request_leaves_no_exemplar() {
    let metrics = GatewayMetrics::default();
    let unsampled = one_request(&metrics, Sampler::AlwaysOff).await;
    let openmetrics = metrics.encode();
    assert!(openmetrics.contains("gateway_request_duration_seconds_count"));
    assert!(!openmetrics.contains("trace_id"), "{openmetrics}");
    // Unsampled, the trace still has an ID (it is propagated), but no
    // exported trace to link to.
    assert_ne!(unsampled, TraceId::INVALID);
}
