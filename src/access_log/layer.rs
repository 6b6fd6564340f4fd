use std::{
    fmt,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{entry::Entry, future::ResponseFuture};
use crate::{
    Identity,
    route::{MatchedRoute, RouteTemplate},
};

/// The `tracing` target of the access log events.
pub const TARGET: &str = "tower_gateway::access";

/// Logs one `tracing` event per request, at target [`TARGET`] and level
/// `INFO`, when the response body ends (see the [module
/// documentation](super) for the fields).
///
/// Off unless added: the crate logs no access log of its own accord. When
/// no subscriber is interested in the target, a request costs one
/// `tracing::enabled!` check.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::access_log::AccessLogLayer;
///
/// let svc = ServiceBuilder::new()
///     .layer(AccessLogLayer::new())
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer {
    record_consumer: bool,
}

impl AccessLogLayer {
    /// An access log without consumers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Logs the subject of the verified [`Identity`] as `consumer` (default
    /// `false`: a subject is personal data under most privacy laws, so
    /// logging it is a decision to make, not a default).
    ///
    /// The identity is read from the request as it reaches this layer, so
    /// place the layer after the one that authenticates (or after an mTLS
    /// [`PeerIdentityLayer`](crate::tls::PeerIdentityLayer)) for this to
    /// find one.
    pub fn record_consumer(mut self, record: bool) -> Self {
        self.record_consumer = record;
        self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            layer: *self,
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

impl<S> fmt::Debug for AccessLog<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<super::AccessLogBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return ResponseFuture::new(self.inner.call(request), None);
        }
        let extensions = request.extensions();
        let route = extensions
            .get::<MatchedRoute>()
            .map(|m| m.template().clone())
            .or_else(|| extensions.get::<RouteTemplate>().cloned());
        let consumer = if self.layer.record_consumer {
            extensions.get::<Identity>().cloned()
        } else {
            None
        };
        // The declared size (Content-Length, or the exact size hint of an
        // HTTP/2 body with one): counting the bytes as they are read would
        // need state shared with the request body, an allocation per
        // request, and a request body type of this layer's own.
        let request_bytes = match request.body().is_end_stream() {
            true => Some(0),
            false => request.body().size_hint().exact(),
        };
        let entry = Entry::new(request.method().clone(), route, consumer, request_bytes);
        ResponseFuture::new(self.inner.call(request), Some(entry))
    }
}
