use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    GatewayMetrics,
    registry::{GrpcLabels, GrpcMethodLabels, RouteMethodStatus},
    series::RouteSeries,
};
use crate::{
    reject::is_grpc_request,
    route::{MatchedRoute, RouteTemplate},
};

type RouteFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Records per-request metrics into a [`GatewayMetrics`] registry.
///
/// Labels use the route template (of the [`MatchedRoute`] or a
/// [`RouteTemplate`] in the request extensions, or what
/// [`MetricsLayer::route_from`] extracts), never the raw path; requests
/// without one are labelled `unmatched`. Methods outside the
/// standard set are labelled `OTHER`. gRPC calls also count under their
/// service, method and final `grpc-status` (read from the trailers, or the
/// headers of a trailers-only response). Per-consumer series are counted by
/// a [`ConsumerMetricsLayer`](super::ConsumerMetricsLayer) placed after
/// authentication, where the verified identity is known.
///
/// Place it outside the layers that refuse, so their refusals are counted
/// too — and inside a [`RouteLayer`](crate::route::RouteLayer), whose
/// match it labels by (that layer counts what it refuses itself, see
/// [`RouteLayer::metrics`](crate::route::RouteLayer::metrics)).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::metrics::{GatewayMetrics, MetricsLayer};
///
/// let metrics = GatewayMetrics::default();
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::new(&metrics))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// ```
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: GatewayMetrics,
    route_from: Option<RouteFn>,
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer").finish_non_exhaustive()
    }
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: &GatewayMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            route_from: None,
        }
    }

    /// Takes the route template from the request head with `f` when no
    /// [`RouteTemplate`] extension is present (for example axum's
    /// `MatchedPath`). Values are capped like every route label.
    pub fn route_from(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.route_from = Some(Arc::new(f));
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    /// Counts a request that no route took (refused before any
    /// [`MetricsLayer`] saw it) under the route label `unmatched`.
    pub(crate) fn record_unmatched(&self, method: &Method, status: http::StatusCode) {
        self.inner
            .families
            .requests
            .get_or_create(&RouteMethodStatus {
                route: Arc::from("unmatched"),
                method: super::series::method_label(method),
                status: status.as_u16(),
            })
            .inc();
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn grpc_names(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// gRPC status codes as label values (gRPC `statuscodes.md`).
fn grpc_status_label(value: Option<&[u8]>) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<usize>().ok())
        .and_then(|code| NAMES.get(code).copied())
        .unwrap_or("UNKNOWN")
}

/// What is known about a request when its response completes.
struct Record {
    metrics: GatewayMetrics,
    series: Arc<RouteSeries>,
    started: Instant,
    grpc: Option<GrpcMethodLabels>,
    grpc_status: Option<&'static str>,
    status: u16,
    response_bytes: u64,
    request_bytes: Option<Arc<AtomicU64>>,
    done: bool,
}

impl Record {
    /// Called once, when the response body ends or is dropped.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let f = &self.metrics.inner.families;
        self.series.in_flight.dec();
        self.series
            .response_size
            .observe(self.response_bytes as f64);
        let request_bytes = self
            .request_bytes
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        self.series.request_size.observe(request_bytes as f64);
        if let Some(grpc) = self.grpc.take() {
            // A stream that ended without a status was cut off.
            let status = self.grpc_status.unwrap_or("CANCELLED");
            f.grpc_duration
                .get_or_create(&grpc)
                .observe(self.started.elapsed().as_secs_f64());
            let labels = GrpcLabels {
                grpc_service: grpc.grpc_service,
                grpc_method: grpc.grpc_method,
                grpc_status: status,
            };
            f.grpc_requests.get_or_create(&labels).inc();
        }
    }

    /// Called when the inner service failed without a response.
    fn fail(&mut self) {
        self.metrics
            .inner
            .families
            .request_errors
            .get_or_create(&self.series.labels)
            .inc();
        self.grpc_status = Some("UNAVAILABLE");
        self.finish();
    }

    fn head(&mut self, headers: &HeaderMap, status: u16) {
        self.status = status;
        let f = &self.metrics.inner.families;
        let seconds = self.started.elapsed().as_secs_f64();
        #[cfg(feature = "otel")]
        {
            let (exemplar, at) = super::exemplar::current();
            self.series.duration.observe(seconds, exemplar, at);
        }
        #[cfg(not(feature = "otel"))]
        self.series.duration.observe(seconds);
        self.series.requests(f, status).inc();
        if self.grpc.is_some() {
            if let Some(value) = headers.get("grpc-status") {
                self.grpc_status = Some(grpc_status_label(Some(value.as_bytes())));
            } else if !(200..300).contains(&status) {
                // An HTTP error before any gRPC status (gRPC over HTTP/2
                // spec, "HTTP to gRPC status code mapping").
                self.grpc_status = Some(match status {
                    400 => "INTERNAL",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "UNIMPLEMENTED",
                    429 | 502..=504 => "UNAVAILABLE",
                    _ => "UNKNOWN",
                });
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S>
where
    S: Service<Request<MetricsRequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let metrics = &self.layer.metrics;
        let inner = &metrics.inner;
        let extensions = request.extensions();
        let template = extensions
            .get::<MatchedRoute>()
            .map(MatchedRoute::template)
            .or_else(|| extensions.get::<RouteTemplate>());
        let route = match template {
            Some(template) => inner.routes.get(template.as_str()),
            None => {
                let (parts, body) = request.into_parts();
                let extracted = self.layer.route_from.as_ref().and_then(|f| f(&parts));
                let route = match extracted {
                    Some(route) => inner.routes.get(&route),
                    None => Arc::from("unmatched"),
                };
                return self.start(Request::from_parts(parts, body), route);
            }
        };
        self.start(request, route)
    }
}

impl<S> Metrics<S> {
    fn start<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        route: Arc<str>,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<MetricsRequestBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
    {
        let metrics = self.layer.metrics.clone();
        let inner = &metrics.inner;
        let series = inner.series.get(&inner.families, &route, request.method());
        series.in_flight.inc();
        // The bytes the client actually sent, counted as the body is read
        // (a declared `Content-Length` is the client's claim, not a fact).
        let request_bytes = (!request.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let counter = request_bytes.clone();
        let request = request.map(|body| MetricsRequestBody {
            body,
            bytes: counter,
        });
        let grpc = if is_grpc_request(request.headers()) {
            grpc_names(request.uri().path()).map(|(service, method)| {
                let capped = inner.grpc_methods.get(&format!("{service}/{method}"));
                match capped.split_once('/') {
                    Some((s, m)) => GrpcMethodLabels {
                        grpc_service: Arc::from(s),
                        grpc_method: Arc::from(m),
                    },
                    None => GrpcMethodLabels {
                        grpc_service: capped.clone(),
                        grpc_method: capped,
                    },
                }
            })
        } else {
            None
        };
        let record = Record {
            metrics: metrics.clone(),
            series,
            started: Instant::now(),
            grpc,
            grpc_status: None,
            status: 0,
            response_bytes: 0,
            request_bytes,
            done: false,
        };
        ResponseFuture {
            future: self.inner.call(request),
            record: Some(record),
        }
    }
}

pin_project! {
    /// The response future of [`Metrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        record: Option<Record>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some(mut record) = this.record.take() else {
            // Polled after completion: nothing left to record.
            return Poll::Ready(result.map(|r| r.map(|body| MetricsBody { body, record: None })));
        };
        Poll::Ready(match result {
            Ok(response) => {
                record.head(response.headers(), response.status().as_u16());
                Ok(response.map(|body| MetricsBody {
                    body,
                    record: Some(record),
                }))
            }
            Err(error) => {
                record.fail();
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that counts its bytes and reads the final gRPC
    /// status, recording both when it ends or is dropped.
    pub struct MetricsBody<B> {
        #[pin]
        body: B,
        record: Option<Record>,
    }
}

/// An empty body that records nothing: the body of a refusal made outside
/// the layer, which the stack's render step fills in.
impl<B: Default> Default for MetricsBody<B> {
    fn default() -> Self {
        Self {
            body: B::default(),
            record: None,
        }
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody").finish_non_exhaustive()
    }
}

impl<B> Body for MetricsBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let Some(record) = this.record.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        record.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && record.grpc.is_some()
                    {
                        record.grpc_status = Some(grpc_status_label(
                            trailers.get("grpc-status").map(|v| v.as_bytes()),
                        ));
                    }
                }
                Some(Err(_)) => {
                    if record.grpc.is_some() && record.grpc_status.is_none() {
                        record.grpc_status = Some("UNAVAILABLE");
                    }
                    record.finish();
                }
                None => record.finish(),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A request body that counts the bytes the client sent, for
    /// `gateway_request_size_bytes`.
    pub struct MetricsRequestBody<B> {
        #[pin]
        body: B,
        bytes: Option<Arc<AtomicU64>>,
    }
}

impl<B> fmt::Debug for MetricsRequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRequestBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for MetricsRequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let (Some(Ok(frame)), Some(bytes)) = (&frame, this.bytes.as_ref())
            && let Some(data) = frame.data_ref()
        {
            bytes.fetch_add(bytes::Buf::remaining(data) as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_path_parsing() {
        assert_eq!(
            grpc_names("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(grpc_names("/nope"), None);
        assert_eq!(grpc_names("/a/b/c"), None);
        assert_eq!(grpc_status_label(Some(b"16")), "UNAUTHENTICATED");
        assert_eq!(grpc_status_label(Some(b"99")), "UNKNOWN");
    }
}
