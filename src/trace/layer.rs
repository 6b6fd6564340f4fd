//! The server span of each request.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Span, field};

use super::RequestId;
use crate::{client_addr::ResolvedClient, route::MatchedRoute};

/// What the gateway does with the trace context a client sent (W3C
/// `traceparent`, `tracestate`, and `baggage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientContext {
    /// The client's context is the parent of the gateway's span, and is
    /// continued upstream: for clients inside your own system.
    Trust,
    /// Every request starts a new trace (the default, for a gateway facing
    /// clients you do not control: a client cannot pick trace IDs, force
    /// sampling, or join your traces). The client's context, if valid, is
    /// kept as a span link, and its `traceparent`, `tracestate` and
    /// `baggage` headers are removed from the request, so they never reach
    /// an upstream.
    #[default]
    Restart,
}

/// Opens a server span for each request (see the [module
/// documentation](super) for its name, its fields, and where the layer
/// goes).
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    client_context: ClientContext,
    record_consumer: bool,
    sample_ratio: f64,
    #[cfg(feature = "otel")]
    baggage: bool,
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self {
            client_context: ClientContext::default(),
            record_consumer: false,
            sample_ratio: 1.0,
            #[cfg(feature = "otel")]
            baggage: false,
        }
    }
}

impl TraceLayer {
    /// A server span per request; the client's trace context is restarted
    /// ([`ClientContext::Restart`]) and the consumer is not recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do with the client's trace context (default
    /// [`ClientContext::Restart`]).
    pub fn client_context(mut self, policy: ClientContext) -> Self {
        self.client_context = policy;
        self
    }

    /// Records the authenticated consumer (the token's subject) as
    /// `enduser.id` (default `false`: a subject is personal data, and spans
    /// often leave the organisation that owns it).
    pub fn record_consumer(mut self, record: bool) -> Self {
        self.record_consumer = record;
        self
    }

    /// Samples this fraction of requests (default `1.0`: every request gets
    /// a span, and the OpenTelemetry SDK's sampler decides what is kept).
    ///
    /// Sample here rather than in the SDK: a request this layer does not
    /// sample gets no span at all — no layer records anything, the proxy
    /// opens no attempt spans — so it costs next to nothing, where an
    /// SDK-side "drop" still builds every span first. The request still
    /// carries a W3C `traceparent` upstream, with the sampled flag off, so
    /// services make the same decision. With [`ClientContext::Trust`], a
    /// client's `traceparent` decides instead (its sampled flag).
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// Whether to open a span for a request with these headers.
    fn samples(&self, headers: &HeaderMap) -> bool {
        if self.client_context == ClientContext::Trust
            && let Some(sampled) = parent_sampled(headers)
        {
            return sampled;
        }
        self.sample_ratio >= 1.0 || (self.sample_ratio > 0.0 && fastrand::f64() < self.sample_ratio)
    }

    /// Takes W3C `baggage` from trusted clients into the span's context, so
    /// the proxy passes it on (default `false`). Honoured only with
    /// [`ClientContext::Trust`].
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn baggage(mut self, baggage: bool) -> Self {
        self.baggage = baggage;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            layer: *self,
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    layer: TraceLayer,
}

/// The span's OpenTelemetry name, `{method} {route template}` (or the
/// method alone without a route), formatted only if a subscriber records
/// it.
struct SpanName<'a> {
    method: &'a Method,
    route: Option<&'a str>,
}

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => f.write_str(self.method.as_str()),
        }
    }
}

/// The server span. Two call sites, the same but for `enduser.id`: a span
/// without the field ignores the subject the authenticating layer records,
/// so the consumer stays out of traces unless asked for.
macro_rules! server_span {
    ($request:expr, $($consumer:tt)*) => {{
        let request = $request;
        let route = request
            .extensions()
            .get::<MatchedRoute>()
            .map(|route| route.template().as_str());
        let client = ResolvedClient::of(request.extensions());
        tracing::info_span!(
            target: "tower_gateway::trace",
            "request",
            otel.name = %SpanName { method: request.method(), route },
            otel.kind = "server",
            otel.status_code = field::Empty,
            http.request.method = %request.method(),
            http.route = route,
            network.protocol.version = version(request.version()),
            client.address = client.map(|c| field::display(c.ip())),
            network.peer.address = client.map(|c| field::display(c.peer().ip())),
            user_agent.original = request
                .headers()
                .get(header::USER_AGENT)
                .and_then(|value| value.to_str().ok()),
            http.request.body.size = content_length(request.headers()),
            http.response.status_code = field::Empty,
            http.response.body.size = field::Empty,
            gateway.request_id = request
                .extensions()
                .get::<RequestId>()
                .map(RequestId::as_str),
            gateway.rejection = field::Empty,
            gateway.auth.result = field::Empty,
            gateway.auth.reason = field::Empty,
            gateway.rbac.rule = field::Empty,
            gateway.rbac.outcome = field::Empty,
            gateway.ratelimit.decision = field::Empty,
            gateway.ratelimit.window = field::Empty,
            gateway.ratelimit.fallback = field::Empty,
            gateway.circuit.state = field::Empty,
            $($consumer)*
        )
    }};
}

fn version(version: http::Version) -> Option<&'static str> {
    Some(match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// Integers as `i64`: `tracing-opentelemetry` records a `u64` as a string.
fn content_length(headers: &HeaderMap) -> Option<i64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The W3C trace context headers (W3C Trace Context §3, W3C Baggage §3).
const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The sampled flag of a valid version-00 `traceparent` (W3C Trace Context
/// §3.2: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, neither
/// id all zeros); `None` when there is none or it is invalid.
fn parent_sampled(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(TRACEPARENT)?.as_bytes();
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |part: &[u8]| part.iter().all(|&b| b == b'0');
    let mut parts = value.split(|&b| b == b'-');
    let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let valid = version == b"00"
        && trace.len() == 32
        && parent.len() == 16
        && flags.len() == 2
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && !zero(trace)
        && !zero(parent);
    if !valid {
        return None;
    }
    let low = match flags[1] {
        b @ b'0'..=b'9' => b - b'0',
        b => b - b'a' + 10,
    };
    Some(low & 1 == 1)
}

/// A new trace context with the sampled flag off: fresh random ids, so
/// upstreams neither join a client's trace nor sample on their own.
fn unsampled_traceparent() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // "00-" + 32 hex + "-" + 16 hex + "-00", written in place.
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let mut trace = fastrand::u128(1..);
    for digit in text[3..35].iter_mut().rev() {
        *digit = HEX[(trace & 0xf) as usize];
        trace >>= 4;
    }
    let mut parent = fastrand::u64(1..);
    for digit in text[36..52].iter_mut().rev() {
        *digit = HEX[(parent & 0xf) as usize];
        parent >>= 4;
    }
    // Hex digits and dashes only: always a valid header value.
    http::HeaderValue::from_bytes(&text).unwrap_or(http::HeaderValue::from_static(
        "00-00000000000000000000000000000001-0000000000000001-00",
    ))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TraceService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if !self.layer.samples(request.headers()) {
            // No span: nothing records, nothing is exported. Upstreams
            // still learn the decision from the sampled flag.
            let keep_client = self.layer.client_context == ClientContext::Trust
                && parent_sampled(request.headers()).is_some();
            if !keep_client {
                for name in TRACE_HEADERS {
                    request.headers_mut().remove(name);
                }
                request
                    .headers_mut()
                    .insert(TRACEPARENT, unsampled_traceparent());
            }
            return TraceFuture {
                inner: self.inner.call(request),
                span: Span::none(),
            };
        }
        let span = if self.layer.record_consumer {
            server_span!(&request, enduser.id = field::Empty)
        } else {
            server_span!(&request,)
        };
        #[cfg(feature = "otel")]
        super::propagation::adopt(
            &span,
            request.headers(),
            self.layer.client_context,
            self.layer.baggage,
        );
        if self.layer.client_context == ClientContext::Restart {
            for name in TRACE_HEADERS {
                request.headers_mut().remove(name);
            }
        }
        // Layers decide in `call` too: they record on this span.
        let inner = span.in_scope(|| self.inner.call(request));
        TraceFuture { inner, span }
    }
}

pin_project! {
    /// The response future of [`TraceService`]: runs the inner future in
    /// the request's span, and records the response on it.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        if this.span.is_disabled() {
            return Poll::Ready(result);
        }
        match &result {
            Ok(response) => {
                let status = response.status();
                this.span
                    .record("http.response.status_code", i64::from(status.as_u16()));
                let size = content_length(response.headers())
                    .or_else(|| i64::try_from(response.body().size_hint().exact()?).ok());
                this.span.record("http.response.body.size", size);
                if let Some(rejection) = crate::reject::rejection(response) {
                    this.span.record("gateway.rejection", rejection.code());
                }
                // OpenTelemetry HTTP semantic conventions: a server span is
                // an error for 5xx only; 4xx is the client's.
                if status.is_server_error() {
                    this.span.record("otel.status_code", "error");
                }
            }
            Err(_) => {
                this.span.record("otel.status_code", "error");
            }
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}
