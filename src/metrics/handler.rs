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

/// Serves a [`GatewayMetrics`] registry in OpenMetrics text format — a plain
/// tower service, usable as an axum route service.
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

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
        );
        ready(Ok(response))
    }
}
