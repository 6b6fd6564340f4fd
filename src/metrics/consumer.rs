use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{GatewayMetrics, registry::ConsumerLabels};
use crate::Identity;

/// Counts requests per consumer (Kong's `per_consumer`): the subject of the
/// verified [`Identity`] and the response status, capped at
/// [`MetricsConfig::max_consumers`](super::MetricsConfig::max_consumers)
/// distinct consumers (more become `other`).
///
/// Place it after authentication: it reads the identity from the request,
/// where the authenticating layer (or an mTLS peer layer) put it. Requests
/// without one are not counted. Without per-consumer series
/// (`max_consumers(0)`) it only passes requests on.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::metrics::{ConsumerMetricsLayer, GatewayMetrics, MetricsLayer};
///
/// let metrics = GatewayMetrics::default();
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::new(&metrics))
///     // .layer(jwt_auth)
///     .layer(ConsumerMetricsLayer::new(&metrics))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerMetricsLayer {
    metrics: GatewayMetrics,
}

impl ConsumerMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: &GatewayMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }
}

impl<S> Layer<S> for ConsumerMetricsLayer {
    type Service = ConsumerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsumerMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ConsumerMetricsLayer`].
#[derive(Debug, Clone)]
pub struct ConsumerMetrics<S> {
    inner: S,
    metrics: GatewayMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConsumerMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ConsumerMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let counted = self.metrics.inner.consumers.as_ref().and_then(|cap| {
            let subject = request
                .extensions()
                .get::<Identity>()
                .and_then(Identity::subject)?;
            Some((self.metrics.clone(), cap.get(subject)))
        });
        ConsumerMetricsFuture {
            inner: self.inner.call(request),
            counted,
        }
    }
}

pin_project! {
    /// The response future of [`ConsumerMetrics`].
    pub struct ConsumerMetricsFuture<F> {
        #[pin]
        inner: F,
        counted: Option<(GatewayMetrics, Arc<str>)>,
    }
}

impl<F, B, E> Future for ConsumerMetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((metrics, consumer))) = (&result, this.counted.take()) {
            metrics
                .inner
                .families
                .consumer_requests
                .get_or_create(&ConsumerLabels {
                    consumer,
                    status: response.status().as_u16(),
                })
                .inc();
        }
        Poll::Ready(result)
    }
}

impl<F> std::fmt::Debug for ConsumerMetricsFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMetricsFuture")
            .finish_non_exhaustive()
    }
}
