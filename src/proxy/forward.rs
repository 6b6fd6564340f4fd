//! Sending a request to one endpoint.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The request body inside the proxy: the caller's body, boxed once so
/// every layer of the upstream stack (retry, buffer, balancer) has one type.
pub type ProxyBody = UnsyncBoxBody<Bytes, tower::BoxError>;

/// The connector the proxy dials with: plain TCP for `http`, rustls for
/// `https` (with the mTLS client configuration of the `tls` module when set).
pub type Connector = HttpsConnector<HttpConnector>;

/// The HTTP version the proxy speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (or HTTP/2 when TLS ALPN negotiates it).
    #[default]
    Http1,
    /// HTTP/2 only — with prior knowledge over plain TCP (h2c), as gRPC
    /// upstreams need.
    Http2,
}

/// HTTP/2 connections per endpoint (lanes): each request takes the lane
/// with the fewest streams open, so streams a few clients hold (stalled
/// uploads, unread downloads) fill one connection's share at most, and a
/// single connection's stream limit never caps the endpoint.
pub(crate) const HTTP2_LANES: usize = 8;

/// Per-stream receive window towards HTTP/2 upstreams. The connection
/// window is [`HTTP2_STREAMS_PER_WINDOW`] times larger, so unread
/// responses exhaust a connection's window only when that many of them
/// share it, not a handful (hyper's defaults are 2 MiB and 5 MiB: three
/// unread downloads stall every other response on the connection).
const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
const HTTP2_STREAMS_PER_WINDOW: u32 = 64;

/// The pooled clients for one upstream: one for HTTP/1.1 (its pool holds a
/// connection per request in flight), [`HTTP2_LANES`] for HTTP/2.
pub(crate) fn clients(
    connector: Connector,
    protocol: UpstreamProtocol,
) -> Box<[Client<Connector, SendBody>]> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(60));
    let lanes = match protocol {
        UpstreamProtocol::Http1 => 1,
        UpstreamProtocol::Http2 => {
            builder
                .http2_only(true)
                .http2_initial_stream_window_size(HTTP2_STREAM_WINDOW)
                .http2_initial_connection_window_size(
                    HTTP2_STREAM_WINDOW * HTTP2_STREAMS_PER_WINDOW,
                );
            HTTP2_LANES
        }
    };
    (0..lanes)
        .map(|_| builder.build(connector.clone()))
        .collect()
}

/// A plain connector (no client certificate; public roots are not trusted
/// either, so an `https` upstream needs the `tls` module).
pub(crate) fn plain_connector(connect_timeout: Duration) -> Result<Connector, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

pin_project! {
    /// A response body from an upstream that fails when no frame arrives
    /// for the upstream's body idle timeout — an upstream that sends its
    /// headers and then stalls must not hold the client forever. Frames are
    /// streamed as they come; nothing is buffered.
    ///
    /// The default is an empty body: the body of the proxy's refusals, which
    /// the stack's render step fills in (see [`crate::reject`]).
    pub struct UpstreamBody {
        // `None`: the empty body of a refusal.
        inner: Option<Incoming>,
        // The timer exists only once the body has had to wait: most
        // responses arrive with their head and never need one, and a
        // frame that arrives costs a clock read, not a timer reset.
        idle: Option<Pin<Box<Sleep>>>,
        last_frame: Instant,
        timeout: Duration,
        // The stream stays counted against its connection until the body
        // is done or dropped.
        stream: Option<crate::proxy::balance::OpenStream>,
    }
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        timeout: Duration,
        stream: crate::proxy::balance::OpenStream,
    ) -> Self {
        Self {
            inner: Some(inner),
            idle: None,
            last_frame: Instant::now(),
            timeout,
            stream: Some(stream),
        }
    }
}

impl Default for UpstreamBody {
    fn default() -> Self {
        Self {
            inner: None,
            idle: None,
            last_frame: Instant::now(),
            timeout: Duration::ZERO,
            stream: None,
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body stalled for {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || inner.is_end_stream() {
                    this.stream.take();
                } else {
                    *this.last_frame = Instant::now();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = *this.last_frame + *this.timeout;
                let idle = match this.idle {
                    Some(idle) => {
                        if idle.deadline() != deadline {
                            idle.as_mut().reset(deadline);
                        }
                        idle
                    }
                    None => this
                        .idle
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                ready!(idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyIdleTimeout(*this.timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A fault of the client's request body, as the upstream call reports it:
/// the body the client sent was malformed or incomplete, or stalled.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(crate) struct ClientBodyError(#[source] tower::BoxError);

/// Why an upstream call failed, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: the request never left the gateway.
    Connect,
    /// The client's body was malformed or cut short (400).
    ClientBody,
    /// The client stopped sending its body (408).
    ClientBodyTimeout,
    /// The upstream failed after the request was (maybe) sent.
    Upstream,
}

impl Failure {
    pub(crate) fn of(error: &hyper_util::client::legacy::Error) -> Self {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        let mut client_body = false;
        while let Some(e) = current {
            if e.is::<crate::connection::RequestBodyTimeout>() {
                return Failure::ClientBodyTimeout;
            }
            client_body |= e.is::<ClientBodyError>();
            current = e.source();
        }
        if client_body {
            Failure::ClientBody
        } else if error.is_connect() {
            Failure::Connect
        } else {
            Failure::Upstream
        }
    }
}

/// The client's body, shared between the attempts of one request: the
/// first attempt that polls it takes it; until then a retry can still send
/// it (a refused connection never polled it).
pub(crate) struct BodySlot {
    body: Mutex<Option<ProxyBody>>,
    finished: AtomicBool,
}

/// The request body as it is sent to an endpoint: the client's body,
/// taken from its [`BodySlot`] on first poll, errors marked as the
/// client's ([`ClientBodyError`]), trailers filtered — or dropped where the
/// upstream protocol (HTTP/1.1) cannot carry them reliably.
pub(crate) struct SendBody {
    state: SendState,
    keep_trailers: bool,
    hint: SizeHint,
}

enum SendState {
    Empty,
    Waiting(Arc<BodySlot>),
    Streaming(ProxyBody, Arc<BodySlot>),
    Done,
}

/// What the proxy keeps of a request body after handing it to an attempt.
#[derive(Clone)]
pub(crate) struct BodyHandle {
    slot: Option<Arc<BodySlot>>,
    keep_trailers: bool,
    hint: SizeHint,
}

impl SendBody {
    pub(crate) fn new(body: ProxyBody, keep_trailers: bool) -> (Self, BodyHandle) {
        let hint = body.size_hint();
        let slot = (!body.is_end_stream()).then(|| {
            Arc::new(BodySlot {
                body: Mutex::new(Some(body)),
                finished: AtomicBool::new(false),
            })
        });
        let handle = BodyHandle {
            slot,
            keep_trailers,
            hint,
        };
        let body = handle.body();
        (body, handle)
    }
}

impl BodyHandle {
    fn body(&self) -> SendBody {
        SendBody {
            state: match &self.slot {
                None => SendState::Empty,
                Some(slot) => SendState::Waiting(slot.clone()),
            },
            keep_trailers: self.keep_trailers,
            hint: self.hint,
        }
    }

    /// The body for another attempt, if no attempt has started sending it.
    pub(crate) fn again(&self) -> Option<SendBody> {
        match &self.slot {
            None => Some(self.body()),
            Some(slot) => slot
                .body
                .lock()
                .is_ok_and(|b| b.is_some())
                .then(|| self.body()),
        }
    }

    /// Whether the request has no body at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.slot.is_none()
    }

    /// Whether an attempt started sending the body and the client has not
    /// finished it.
    pub(crate) fn unfinished(&self) -> bool {
        self.slot.as_ref().is_some_and(|slot| {
            !slot.finished.load(Ordering::Acquire) && slot.body.lock().is_ok_and(|b| b.is_none())
        })
    }
}

/// Trailer fields never forwarded: hop-by-hop and framing fields, and
/// those a gateway asserts or routes on (RFC 9110 §6.5.1: a recipient must
/// not merge trailers into the header section unless it understands them;
/// an upstream that does must not find the caller's identity there).
fn trailer_forbidden(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_')
        || matches!(
            name,
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "content-type"
                | "content-encoding"
                | "host"
                | "authorization"
                | "cookie"
                | "forwarded"
                | "via"
                | "x-real-ip"
        )
        || name.starts_with("x-forwarded-")
        || name.starts_with("proxy-")
        || name.starts_with("x-user-")
}

fn filter_trailers(trailers: &mut HeaderMap) {
    let forbidden: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| trailer_forbidden(name))
        .cloned()
        .collect();
    for name in forbidden {
        trailers.remove(name);
    }
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                SendState::Empty | SendState::Done => return Poll::Ready(None),
                SendState::Waiting(slot) => {
                    let taken = slot.body.lock().ok().and_then(|mut b| b.take());
                    this.state = match taken {
                        Some(body) => SendState::Streaming(body, slot.clone()),
                        // Another attempt has it: never the case, as attempts
                        // run one after the other.
                        None => SendState::Done,
                    };
                }
                SendState::Streaming(body, slot) => {
                    match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                        None => {
                            slot.finished.store(true, Ordering::Release);
                            this.state = SendState::Done;
                            return Poll::Ready(None);
                        }
                        Some(Err(error)) => {
                            this.state = SendState::Done;
                            return Poll::Ready(Some(Err(Box::new(ClientBodyError(error)))));
                        }
                        Some(Ok(frame)) => {
                            if body.is_end_stream() {
                                slot.finished.store(true, Ordering::Release);
                            }
                            let frame = match frame.into_trailers() {
                                Ok(mut trailers) => {
                                    if !this.keep_trailers {
                                        continue;
                                    }
                                    filter_trailers(&mut trailers);
                                    Frame::trailers(trailers)
                                }
                                Err(frame) => frame,
                            };
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            SendState::Empty | SendState::Done => true,
            SendState::Waiting(_) => false,
            SendState::Streaming(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            SendState::Empty | SendState::Done => SizeHint::with_exact(0),
            SendState::Waiting(_) => self.hint,
            SendState::Streaming(body, _) => body.size_hint(),
        }
    }
}
