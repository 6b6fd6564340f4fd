//! One upstream service: its endpoints, balanced, with timeouts, retries and
//! per-endpoint circuit breakers.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, Method, Request, Response, Uri, Version, header, uri::Scheme};
use hyper_util::client::legacy::Client;
use tower::retry::budget::{Budget, TpsBudget};
use tower_service::Service;

use super::{
    Balancer, Connector, ProxyBody, RetryConfig, UpstreamBody, UpstreamProtocol,
    balance::{EndpointList, EndpointState},
    forward::{self, BodyHandle, Failure, SendBody},
    metrics::{Resolved, UpstreamMetrics},
};
use crate::{
    circuit::{CircuitBreaker, CircuitConfig, Classify, EjectionGroup, Outcome, ServerErrors},
    deferred::DeferredTask,
    discovery::{EndpointWatch, Snapshot},
    reject::{Rejection, RejectionKind, RequestHead},
};

/// An upstream that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The TLS configuration of the default connector was refused.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A route pattern that is not a normalized absolute path.
    #[error("invalid route {0:?}")]
    InvalidRoute(String),
}

/// Configures one upstream service (see the [module documentation](super)).
///
/// ```
/// # fn main() -> Result<(), tower_gateway::proxy::ProxyError> {
/// use std::time::Duration;
/// use tower_gateway::discovery::{Endpoint, StaticDiscovery};
/// use tower_gateway::proxy::{Balancer, RetryConfig, Upstream};
///
/// let orders = StaticDiscovery::new([Endpoint::new("orders-1", "127.0.0.1", 3001)]);
/// let upstream = Upstream::new("orders", orders.watch())
///     .balancer(Balancer::LeastRequest)
///     .connect_timeout(Duration::from_secs(1))
///     .request_timeout(Duration::from_secs(10))
///     .retries(RetryConfig::default())
///     .build()?;
/// # Ok(()) }
/// ```
pub struct Upstream {
    name: Arc<str>,
    watch: EndpointWatch,
    connector: Option<Connector>,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryConfig,
    circuit: CircuitConfig,
    max_ejected_fraction: f64,
    balancer: Balancer,
    body_idle_timeout: Duration,
    metrics: Option<UpstreamMetrics>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("balancer", &self.balancer)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream named `name` (the label of its metrics) whose endpoints
    /// `watch` keeps current.
    pub fn new(name: impl Into<Arc<str>>, watch: EndpointWatch) -> Self {
        Self {
            name: name.into(),
            watch,
            connector: None,
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            retry: RetryConfig::default(),
            circuit: CircuitConfig::default(),
            max_ejected_fraction: 0.5,
            balancer: Balancer::default(),
            body_idle_timeout: Duration::from_secs(60),
            metrics: None,
        }
    }

    /// Dials endpoints over TLS with `connector` (for mTLS, from
    /// the `tls` module); the scheme becomes `https`. The connector's own
    /// connect timeout applies.
    pub fn tls(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// The HTTP version spoken to the endpoints (default HTTP/1.1; use
    /// [`UpstreamProtocol::Http2`] for gRPC over plain TCP).
    ///
    /// HTTP/1.1 keeps a pool of connections per endpoint, one request at a
    /// time on each: a client that stalls its upload or never reads its
    /// download holds one connection, never another client's. HTTP/2
    /// multiplexes every client onto a few shared connections, whose stream
    /// limit and flow-control window a few stalled clients could hold; the
    /// server's progress timeout and the body idle timeout bound how long.
    pub fn protocol(mut self, protocol: UpstreamProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Time allowed to open a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for the response head, retries included (default 30 s);
    /// then the client gets 504 (gRPC `DEADLINE_EXCEEDED`) — or 408 when
    /// the client had not finished sending its body.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the response body may stall between two frames (default
    /// 60 s); then the response ends with an error and the client's
    /// connection is reset, instead of hanging on an upstream that sent its
    /// headers and stopped. Set it above the longest pause of a stream you
    /// serve (server-sent events, gRPC streams).
    pub fn body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.body_idle_timeout = timeout;
        self
    }

    /// Retry policy (default [`RetryConfig::default`]).
    pub fn retries(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Per-endpoint circuit breakers (outlier ejection): an endpoint whose
    /// breaker opens is skipped by the balancer; at most
    /// `max_ejected_fraction` of the endpoints are ejected at once, never the
    /// last one.
    pub fn circuit(mut self, config: CircuitConfig, max_ejected_fraction: f64) -> Self {
        self.circuit = config;
        self.max_ejected_fraction = max_ejected_fraction;
        self
    }

    /// How requests are spread over the endpoints (default
    /// [`Balancer::LeastRequest`]).
    pub fn balancer(mut self, balancer: impl Into<Balancer>) -> Self {
        self.balancer = balancer.into();
        self
    }

    /// Reports endpoints, circuit states and upstream latency to `metrics`.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: UpstreamMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the service. Needs no Tokio runtime: the task that follows
    /// discovery starts with the first request (inside the runtime that
    /// serves it), and catches up on whatever discovery published since.
    pub fn build(self) -> Result<UpstreamService, ProxyError> {
        let (connector, scheme) = match self.connector {
            Some(connector) => (connector, Scheme::HTTPS),
            None => (
                forward::plain_connector(self.connect_timeout)?,
                Scheme::HTTP,
            ),
        };
        let endpoints = Arc::new(EndpointList::new(self.balancer));
        let clients = forward::clients(connector, self.protocol);
        let metrics = self.metrics.map(|m| m.resolve(&self.name));
        let membership = Membership {
            name: self.name.clone(),
            lanes: clients.len(),
            circuit: self.circuit,
            group: EjectionGroup::new(self.max_ejected_fraction),
            metrics: metrics.clone(),
        };
        // The first set is in place before the first request. The first
        // request starts the task (applying anything published meanwhile
        // first, so it is routed on the current set); from then on the
        // task applies sets as discovery publishes them, requests or not,
        // and counts them for metrics.
        let mut updates = self.watch.subscribe();
        membership.apply(&endpoints, &updates.borrow_and_update());
        membership.count(endpoints.len());
        let follow = endpoints.clone();
        let discovery = self.watch.clone();
        let follower = DeferredTask::new(move || {
            // The source's own task (a Consul watch) starts with ours.
            discovery.start();
            if updates.has_changed().unwrap_or(false) {
                let snapshot = updates.borrow_and_update().clone();
                membership.apply(&follow, &snapshot);
                membership.count(follow.len());
            }
            async move {
                while updates.changed().await.is_ok() {
                    let snapshot = updates.borrow_and_update().clone();
                    membership.apply(&follow, &snapshot);
                    membership.count(follow.len());
                }
            }
        });
        Ok(UpstreamService {
            shared: Arc::new(Shared {
                clients,
                http2: self.protocol == UpstreamProtocol::Http2,
                scheme,
                endpoints,
                request_timeout: self.request_timeout,
                body_idle_timeout: self.body_idle_timeout,
                attempts: self.retry.attempts,
                budget: TpsBudget::new(self.retry.ttl, self.retry.min_per_sec, self.retry.ratio),
                watch: self.watch,
                name: self.name,
                metrics,
                follower,
            }),
        })
    }
}

/// What a new endpoint needs: its breaker's settings and group.
struct Membership {
    name: Arc<str>,
    lanes: usize,
    circuit: CircuitConfig,
    group: EjectionGroup,
    metrics: Option<Resolved>,
}

impl Membership {
    /// Reports the number of endpoints in use.
    fn count(&self, endpoints: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.endpoints.endpoints(endpoints);
        }
    }

    /// Publishes the endpoints of `snapshot`, keeping the state (breaker,
    /// load, latency) of those that did not change.
    fn apply(&self, list: &EndpointList, snapshot: &Snapshot) {
        let current = list.snapshot();
        let mut next = Vec::with_capacity(snapshot.endpoints.len());
        let mut fresh = Vec::new();
        for (id, endpoint) in &snapshot.endpoints {
            if let Some(kept) = current
                .iter()
                .find(|e| e.id == *id && e.endpoint == *endpoint)
            {
                next.push(kept.clone());
                continue;
            }
            let Ok(authority) = endpoint.authority().parse() else {
                tracing::warn!(target: "tower_gateway::proxy", upstream = %self.name, endpoint = ?endpoint, "endpoint address is not a valid authority; skipped");
                continue;
            };
            fresh.push((id, endpoint, authority));
        }
        let initial_rtt = list.initial_rtt(&next);
        for (id, endpoint, authority) in fresh {
            let breaker =
                CircuitBreaker::in_group(format!("{}/{id}", self.name), self.circuit, &self.group);
            if let Some(metrics) = &self.metrics {
                metrics.circuit.attach(&breaker);
            }
            if let Some(state) = EndpointState::new(
                id.clone(),
                endpoint.clone(),
                authority,
                breaker,
                initial_rtt,
                self.lanes,
            ) {
                next.push(Arc::new(state));
            }
        }
        list.publish(next);
    }
}

struct Shared {
    /// One client per lane (see `forward::HTTP2_LANES`).
    clients: Box<[Client<Connector, SendBody>]>,
    http2: bool,
    scheme: Scheme,
    endpoints: Arc<EndpointList>,
    request_timeout: Duration,
    body_idle_timeout: Duration,
    attempts: usize,
    budget: TpsBudget,
    watch: EndpointWatch,
    name: Arc<str>,
    metrics: Option<Resolved>,
    /// The task that follows discovery, started by the first request.
    follower: DeferredTask,
}

/// A balanced, retried, time-limited upstream; failures become 502, 503 or
/// 504 responses (gRPC `UNAVAILABLE` / `DEADLINE_EXCEEDED`) that say nothing
/// about the gateway's internals, and faults of the client's request body
/// become 400 or 408. Cheap to clone; always ready.
#[derive(Clone)]
pub struct UpstreamService {
    shared: Arc<Shared>,
}

impl fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamService")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamService {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The endpoints it balances over.
    pub fn endpoints(&self) -> &EndpointWatch {
        &self.shared.watch
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    /// Sends `request` to an endpoint, retrying where safe, within
    /// `timeout` for the response head.
    pub(crate) fn send(
        &self,
        request: Request<ProxyBody>,
        timeout: Duration,
        retries: Option<usize>,
        report: bool,
    ) -> impl Future<Output = Response<UpstreamBody>> + Send + 'static {
        self.shared.follower.start();
        let shared = self.shared.clone();
        let retries = retries.unwrap_or(shared.attempts);
        let head = Head::of(&request);
        let (parts, body) = request.into_parts();
        let (body, handle) = SendBody::new(body, shared.http2);
        let method = parts.method.clone();
        Sending {
            attempts: tokio::time::timeout(
                timeout,
                attempts(
                    shared.clone(),
                    Some(parts),
                    Some(body),
                    handle.clone(),
                    method,
                    retries,
                    report,
                ),
            ),
            shared,
            head,
            handle,
        }
    }
}

pin_project_lite::pin_project! {
    /// One request to the upstream: its attempts under the deadline, and
    /// what a refusal needs. A struct rather than an `async` block, so
    /// that what the attempts consume is stored once, in them: this future
    /// is the per-request allocation of the proxy.
    struct Sending<F> {
        #[pin]
        attempts: tokio::time::Timeout<F>,
        shared: Arc<Shared>,
        head: Head,
        handle: BodyHandle,
    }
}

impl<F> Future for Sending<F>
where
    F: Future<Output = Result<Response<UpstreamBody>, Rejection>>,
{
    type Output = Response<UpstreamBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match std::task::ready!(this.attempts.poll(cx)) {
            Ok(Ok(response)) => response,
            Ok(Err(rejection)) => this.head.refuse(rejection),
            Err(_) => {
                // The deadline passed. If the client was still sending its
                // body, the wait was the client's doing.
                let rejection = if this.handle.unfinished() {
                    client_body_timeout()
                } else {
                    Rejection::new(
                        RejectionKind::GatewayTimeout,
                        "upstream_timeout",
                        "the upstream did not answer in time",
                    )
                };
                this.head.refuse(rejection)
            }
        })
    }
}

fn client_body_timeout() -> Rejection {
    Rejection::new(
        RejectionKind::RequestTimeout,
        "request_body_timeout",
        "the request body was not received in time",
    )
}

/// The most endpoints one request tries (the first attempt and retries).
const MAX_TRIED: usize = 8;

/// Tries endpoints until one answers, a failure is not safe to retry, or
/// the attempts or the retry budget run out. A retry never goes back to an
/// endpoint this request already tried, while another is left.
async fn attempts(
    shared: Arc<Shared>,
    mut parts: Option<http::request::Parts>,
    mut body: Option<SendBody>,
    handle: BodyHandle,
    method: Method,
    retries: usize,
    report: bool,
) -> Result<Response<UpstreamBody>, Rejection> {
    let shared = &*shared;
    let mut tried = [usize::MAX; MAX_TRIED];
    let mut attempt = 0usize;
    loop {
        let Some((index, endpoint)) = shared.endpoints.pick(&tried[..attempt.min(MAX_TRIED)])
        else {
            // Fail fast: no endpoint would ever answer this request.
            return Err(Rejection::unavailable(
                "no_endpoints",
                "the upstream is unavailable",
                Some(1),
            ));
        };
        if let Some(slot) = tried.get_mut(attempt) {
            *slot = index;
        }
        let more = attempt < retries;
        let retry =
            |attempt: &mut usize, body: &mut Option<SendBody>, again: Option<SendBody>| match again
            {
                Some(again) if more && shared.budget.withdraw() => {
                    *attempt += 1;
                    *body = Some(again);
                    true
                }
                _ => false,
            };
        let permit = match endpoint.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(refused) => {
                // The breaker refused: nothing was sent.
                let again = body.take();
                if retry(&mut attempt, &mut body, again) {
                    continue;
                }
                tracing::Span::current().record("gateway.circuit.state", "open");
                let secs = refused.retry_after.as_secs_f64().ceil() as u64;
                return Err(Rejection::unavailable(
                    "circuit_open",
                    "the upstream is unavailable",
                    Some(secs),
                ));
            }
        };
        let span = attempt_span(shared, &endpoint, &method, attempt);
        let in_flight = endpoint.start();
        let stream = endpoint.open_stream();
        let Some(sent) = dispatch(
            shared,
            &endpoint,
            stream.lane(),
            &mut parts,
            &mut body,
            more,
            &span,
        ) else {
            return Err(upstream_failed("upstream_failed"));
        };
        let started = Instant::now();
        let result = tracing::Instrument::instrument(sent, span.clone()).await;
        let elapsed = started.elapsed();
        record_outcome(&span, &result);
        drop(in_flight);
        if let Some(metrics) = &shared.metrics {
            metrics.latency.record(elapsed);
        }
        let error = match result {
            Ok(response) => {
                endpoint.answered();
                if let Some(decay) = shared.endpoints.decay() {
                    endpoint.observe_rtt(elapsed, shared.endpoints.epoch(), decay);
                }
                let result = Ok::<_, Infallible>(response);
                permit.record(ServerErrors.classify(&result));
                let Ok(response) = result;
                if attempt == 0 {
                    shared.budget.deposit();
                }
                let timeout = shared.body_idle_timeout;
                let mut response =
                    response.map(|incoming| UpstreamBody::new(incoming, timeout, stream));
                if report {
                    response
                        .extensions_mut()
                        .insert(crate::access_log::UpstreamCall {
                            endpoint: endpoint.label.clone(),
                            attempts: u32::try_from(attempt + 1).unwrap_or(u32::MAX),
                        });
                }
                return Ok(response);
            }
            Err(error) => error,
        };
        let failure = Failure::of(&error);
        tracing::debug!(target: "tower_gateway::proxy", upstream = %shared.name, endpoint = %endpoint.authority, %error, ?failure, "upstream call failed");
        match failure {
            Failure::ClientBody | Failure::ClientBodyTimeout => {
                // The client's fault: it says nothing about the endpoint.
                permit.record(Outcome::Ignored);
                return Err(if failure == Failure::ClientBodyTimeout {
                    client_body_timeout()
                } else {
                    Rejection::bad_request(
                        "invalid_request_body",
                        "the request body was malformed or incomplete",
                    )
                });
            }
            Failure::Connect => {
                permit.record(Outcome::Failure);
                endpoint.refused(shared.endpoints.epoch());
                // Never sent: safe to retry whatever the method, if the
                // body was not consumed.
                if retry(&mut attempt, &mut body, handle.again()) {
                    continue;
                }
                return Err(upstream_failed("upstream_unreachable"));
            }
            Failure::Upstream => {
                permit.record(Outcome::Failure);
                // Sent, and maybe processed: only idempotent requests without
                // a body go again.
                let again = handle
                    .again()
                    .filter(|_| handle.is_empty() && idempotent(&method));
                if retry(&mut attempt, &mut body, again) {
                    continue;
                }
                return Err(upstream_failed("upstream_failed"));
            }
        }
    }
}

/// Builds the request of one attempt and hands it to the endpoint's
/// client. The last attempt takes the head; earlier ones send a copy, so a
/// retry still has it (extensions stay behind: nothing upstream reads
/// them). A plain function, so that the request under construction takes
/// no room in the per-request future, which is boxed.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    shared: &Shared,
    endpoint: &EndpointState,
    lane: usize,
    parts: &mut Option<http::request::Parts>,
    body: &mut Option<SendBody>,
    more: bool,
    span: &tracing::Span,
) -> Option<hyper_util::client::legacy::ResponseFuture> {
    let head = match (&*parts, more) {
        (Some(parts), true) => copy_head(parts),
        _ => parts.take()?,
    };
    let mut request = Request::from_parts(head, body.take()?);
    set_target(&mut request, shared, endpoint);
    // The upstream continues the trace under this attempt.
    #[cfg(feature = "otel")]
    crate::trace::inject(span, request.headers_mut());
    #[cfg(not(feature = "otel"))]
    let _ = span;
    Some(shared.clients[lane].request(request))
}

/// The client span of one attempt (see [`crate::trace`]), a child of the
/// request's span — none when the request has no span (a request the
/// `TraceLayer` did not sample costs no spans). Its fields are computed
/// only if a subscriber records it.
fn attempt_span(
    shared: &Shared,
    endpoint: &EndpointState,
    method: &Method,
    attempt: usize,
) -> tracing::Span {
    if tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: "tower_gateway::proxy",
        "upstream",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        server.address = endpoint.authority.host(),
        // Integers as `i64`: `tracing-opentelemetry` records a `u64` as a string.
        server.port = endpoint.authority.port_u16().map(i64::from),
        // OpenTelemetry HTTP semantic conventions: set on resends only.
        http.request.resend_count = (attempt > 0).then_some(attempt as i64),
        gateway.upstream = &*shared.name,
        gateway.endpoint = endpoint.id.as_str(),
        gateway.circuit.state = endpoint.breaker.state().as_str(),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records what one attempt came to on its span.
fn record_outcome<T>(
    span: &tracing::Span,
    result: &Result<Response<T>, hyper_util::client::legacy::Error>,
) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(response) => {
            span.record(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
            if response.status().is_server_error() {
                span.record("error.type", response.status().as_str());
                span.record("otel.status_code", "error");
            }
        }
        Err(error) => {
            let kind = match Failure::of(error) {
                Failure::Connect => "connect",
                Failure::Upstream => "upstream",
                Failure::ClientBody | Failure::ClientBodyTimeout => "client_body",
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

fn upstream_failed(code: &'static str) -> Rejection {
    Rejection::new(
        RejectionKind::BadGateway,
        code,
        "the upstream failed to answer",
    )
}

fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Points the request at `endpoint`: scheme and authority in the URI (path
/// and query stay as the router left them), the endpoint's `Host` unless
/// the proxy preserved the client's, and HTTP/1.1 as the version hyper-util
/// starts from (the pool picks the protocol; the client's version towards
/// the gateway says nothing about this hop).
fn set_target<B>(request: &mut Request<B>, shared: &Shared, endpoint: &EndpointState) {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(shared.scheme.clone());
    parts.authority = Some(endpoint.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    if !request.headers().contains_key(header::HOST) {
        request
            .headers_mut()
            .insert(header::HOST, endpoint.host.clone());
    }
    *request.version_mut() = Version::HTTP_11;
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What rendering a failure needs of the request, kept after the request
/// is sent.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    /// Only the content type: it decides between HTTP and gRPC rendering.
    content_type: Option<http::HeaderValue>,
    /// And the request ID, which problem documents carry.
    request_id: Option<http::HeaderValue>,
}

impl Head {
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            content_type: request.headers().get(header::CONTENT_TYPE).cloned(),
            request_id: request.headers().get(crate::trace::REQUEST_ID).cloned(),
        }
    }

    /// The proxy's response to a refused request (see [`crate::reject`]).
    pub(crate) fn refuse(&self, rejection: Rejection) -> Response<UpstreamBody> {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, content_type.clone());
        }
        if let Some(id) = &self.request_id {
            headers.insert(crate::trace::REQUEST_ID, id.clone());
        }
        rejection.into_response(&RequestHead::new(&self.method, &self.uri, &headers))
    }
}

impl Service<Request<ProxyBody>> for UpstreamService {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Endpoints are chosen per request in `call`; there is no queue to
        // wait for, and an ejected endpoint is routed around there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let sent = self.send(request, self.shared.request_timeout, None, false);
        Box::pin(async move { Ok(sent.await) })
    }
}
