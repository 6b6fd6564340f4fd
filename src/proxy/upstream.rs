//! One upstream service: its endpoints, balanced, with timeouts, retries and
//! per-endpoint circuit breakers.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, Method, Request, Response, Uri, header, uri::Scheme};
use tower::{
    BoxError, Layer,
    balance::p2c::Balance,
    buffer::Buffer,
    load::{CompleteOnResponse, PeakEwmaDiscover},
    retry::Retry,
    timeout::Timeout,
    util::BoxCloneSyncService,
};
use tower_service::Service;

use super::{
    Connector, ProxyBody, RetryConfig, UpstreamBody, UpstreamProtocol,
    balance::{EndpointServices, PinnedChoice},
    forward::{self, Forward},
    retry::{RetryPolicy, never_sent},
};
use crate::{
    circuit::{CircuitBreakerLayer, CircuitConfig, EjectionGroup},
    discovery::{Endpoint, EndpointWatch},
    observe::Observer,
    reject::{Rejection, RejectionKind, Renderer, RequestHead, ResponseBody},
};

/// An upstream that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The upstream's worker needs a Tokio runtime; `build()` ran outside one.
    #[error("building an upstream needs a Tokio runtime")]
    NoRuntime,
    /// The TLS configuration of the default connector was refused.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A route pattern that is not a normalized absolute path.
    #[error("invalid route {0:?}")]
    InvalidRoute(String),
}

/// Configures one upstream service (see the [module documentation](super)).
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_gateway::proxy::ProxyError> {
/// use std::time::Duration;
/// use tower_gateway::discovery::{Endpoint, StaticDiscovery};
/// use tower_gateway::proxy::{RetryConfig, Upstream};
///
/// let orders = StaticDiscovery::new([Endpoint::new("orders-1", "127.0.0.1", 3001)]);
/// let upstream = Upstream::new("orders", orders.watch())
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
    queue: usize,
    default_rtt: Duration,
    body_idle_timeout: Duration,
    observer: Observer,
    renderer: Renderer,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
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
            queue: 1024,
            default_rtt: Duration::from_millis(30),
            body_idle_timeout: Duration::from_secs(60),
            observer: Observer::default(),
            renderer: Renderer::default(),
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
    /// then the client gets 504 (gRPC `DEADLINE_EXCEEDED`).
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

    /// Requests that may wait for an endpoint (default 1024).
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = capacity.max(1);
        self
    }

    /// The latency a new endpoint is assumed to have until it has answered
    /// (default 30 ms, as in linkerd). Peak-EWMA prefers endpoints
    /// with lower cost, so a lower value sends new endpoints traffic sooner;
    /// a higher one warms them up more cautiously.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// Reports endpoints, circuit states and upstream latency to `observer`.
    pub fn observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Renders 502/503/504 rejections with `renderer`.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Builds the service and starts its worker task (needs a Tokio runtime).
    pub fn build(self) -> Result<UpstreamService, ProxyError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ProxyError::NoRuntime)?;
        let (connector, scheme) = match self.connector {
            Some(connector) => (connector, Scheme::HTTPS),
            None => (
                forward::plain_connector(self.connect_timeout)?,
                Scheme::HTTP,
            ),
        };
        let client = forward::client(connector, self.protocol);
        let breakers = CircuitBreakerLayer::per_endpoint(
            self.name.clone(),
            self.circuit,
            EjectionGroup::new(self.max_ejected_fraction),
        )
        .observer(self.observer.clone())
        .renderer(self.renderer.clone());
        let name = self.name.clone();
        let body_idle_timeout = self.body_idle_timeout;
        let make = move |endpoint: &Endpoint| {
            let authority = endpoint.authority().parse().ok();
            if authority.is_none() {
                tracing::warn!(target: "tower_gateway::proxy", upstream = %name, endpoint = ?endpoint, "endpoint address is not a valid authority; skipped");
            }
            authority.map(|authority| {
                breakers.layer(Forward {
                    client: client.clone(),
                    scheme: scheme.clone(),
                    authority,
                    body_idle_timeout,
                })
            })
        };
        let endpoints = EndpointServices::new(self.watch.changes(), make);
        // Report the endpoint count as discovery changes, requests or not;
        // the task ends when the discovery source does.
        let mut updates = self.watch.subscribe();
        let (observer, name) = (self.observer.clone(), self.name.clone());
        runtime.spawn(async move {
            loop {
                let count = updates.borrow_and_update().endpoints.len();
                observer.endpoints(&name, count);
                if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        // Peak-EWMA (linkerd's default): an endpoint's cost is its latency,
        // decaying over 10 s, times its in-flight requests; a new endpoint
        // starts at `default_rtt`.
        let endpoints = PeakEwmaDiscover::new::<Request<ProxyBody>>(
            endpoints,
            self.default_rtt,
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        );
        let balanced = PinnedChoice::new(Balance::new(endpoints));
        let (buffer, worker) = Buffer::pair(balanced, self.queue);
        runtime.spawn(worker);
        let stack = Timeout::new(
            Retry::new(RetryPolicy::new(&self.retry), buffer),
            self.request_timeout,
        );
        Ok(UpstreamService {
            inner: BoxCloneSyncService::new(stack),
            watch: self.watch,
            name: self.name,
            observer: self.observer,
            renderer: self.renderer,
            ready_error: None,
        })
    }
}

type Inner =
    BoxCloneSyncService<Request<ProxyBody>, Response<ResponseBody<UpstreamBody>>, BoxError>;

/// A balanced, retried, time-limited upstream; failures become 502, 503 or
/// 504 responses (gRPC `UNAVAILABLE` / `DEADLINE_EXCEEDED`) that say nothing
/// about the gateway's internals. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamService {
    inner: Inner,
    watch: EndpointWatch,
    name: Arc<str>,
    observer: Observer,
    renderer: Renderer,
    ready_error: Option<Arc<str>>,
}

impl fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamService")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamService {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoints it balances over.
    pub fn endpoints(&self) -> &EndpointWatch {
        &self.watch
    }
}

/// What the error response needs of the request, kept after the request is
/// sent.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        // Only the content type decides the rendering (HTTP or gRPC).
        let mut headers = HeaderMap::new();
        if let Some(ct) = request.headers().get(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers,
        }
    }

    pub(crate) fn respond(
        &self,
        renderer: &Renderer,
        rejection: &Rejection,
    ) -> Response<ResponseBody<UpstreamBody>> {
        renderer.respond(
            rejection,
            &RequestHead::new(&self.method, &self.uri, &self.headers),
        )
    }
}

fn failure_rejection(error: &BoxError) -> Rejection {
    if error.is::<tower::timeout::error::Elapsed>() {
        Rejection::new(
            RejectionKind::GatewayTimeout,
            "upstream_timeout",
            "the upstream did not answer in time",
        )
    } else {
        let code = if never_sent(&**error) {
            "upstream_unreachable"
        } else {
            "upstream_failed"
        };
        Rejection::new(
            RejectionKind::BadGateway,
            code,
            "the upstream failed to answer",
        )
    }
}

impl Service<Request<ProxyBody>> for UpstreamService {
    type Response = Response<ResponseBody<UpstreamBody>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // The worker is gone: answer 503 from `call`.
                self.ready_error = Some(error.to_string().into());
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let head = Head::of(&request);
        let renderer = self.renderer.clone();
        if let Some(error) = self.ready_error.take() {
            tracing::error!(target: "tower_gateway::proxy", upstream = %self.name, %error, "upstream worker failed");
            let rejection = Rejection::unavailable(
                "upstream_unavailable",
                "the upstream is unavailable",
                Some(1),
            );
            return Box::pin(std::future::ready(Ok(head.respond(&renderer, &rejection))));
        }
        if self.watch.current().endpoints.is_empty() {
            // Fail fast: the balancer would wait for an endpoint until the
            // request timed out.
            let rejection =
                Rejection::unavailable("no_endpoints", "the upstream is unavailable", Some(1));
            return Box::pin(std::future::ready(Ok(head.respond(&renderer, &rejection))));
        }
        // The inner service was polled ready by `poll_ready`; swap it out so
        // the clone left behind is the one polled next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let observer = self.observer.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = inner.call(request).await;
            observer.upstream_latency(&name, started.elapsed());
            Ok(match result {
                Ok(response) => response,
                Err(error) => {
                    tracing::debug!(target: "tower_gateway::proxy", upstream = %name, %error, "upstream call failed");
                    head.respond(&renderer, &failure_rejection(&error))
                }
            })
        })
    }
}
