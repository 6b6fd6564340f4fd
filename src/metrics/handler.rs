use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use tower_service::Service;

use super::GatewayMetrics;

/// The OpenMetrics text content type (OpenMetrics 1.0 §"Overall Structure").
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format 0.0.4 content type.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves a [`GatewayMetrics`] registry — a plain tower service, usable as
/// an axum route service.
///
/// The format follows the `Accept` header: OpenMetrics text when it names
/// `application/openmetrics-text` (as Prometheus does) or names no known
/// format, Prometheus text format 0.0.4 when it asks for `text/plain` only.
///
/// ```
/// use axum::{Router, routing::get_service};
/// use tower_gateway::metrics::{GatewayMetrics, MetricsHandler};
///
/// let metrics = GatewayMetrics::default();
/// let app: Router = Router::new().route_service("/metrics", MetricsHandler::new(&metrics));
/// ```
#[derive(Debug, Clone)]
pub struct MetricsHandler {
    metrics: GatewayMetrics,
}

impl MetricsHandler {
    /// Serves `metrics`.
    pub fn new(metrics: &GatewayMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }
}

impl<B> Service<Request<B>> for MetricsHandler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let accept = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let plain_text =
            !accept.contains("application/openmetrics-text") && accept.contains("text/plain");
        let (body, content_type) = if plain_text {
            (
                self.metrics.encode_prometheus_text(),
                PROMETHEUS_TEXT_CONTENT_TYPE,
            )
        } else {
            (self.metrics.encode(), OPENMETRICS_CONTENT_TYPE)
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        ready(Ok(response))
    }
}
