//! One connection: its first byte, its TLS handshake, then HTTP/1.1 or
//! HTTP/2 until the client leaves, idles too long or the server shuts down.

use std::{
    error::Error as StdError,
    future::Future,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tower::util::Oneshot;
use tower_service::Service;

use super::{
    BoxError, Limits, body::Body, edge::Edge, io::ProgressIo, serve::Slots, shutdown::Signals,
};
use crate::{
    connection::{ClientAddr, RequestBodyTimeout},
    reject::{Rejection, RejectionKind, Renderer, RequestHead, ResponseBody},
};

/// What every connection task shares: the hyper builder, the limits, the
/// shutdown signals.
pub(crate) struct Shared {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) limits: Limits,
    pub(crate) renderer: Renderer,
    pub(crate) signals: Signals,
    #[cfg(feature = "tls")]
    pub(crate) acceptor: Option<crate::tls::ServerTls>,
}

const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// The accept loop asks the connection to close: it is idle, and a slot
/// is needed.
pub(crate) const EVICT: u8 = 1;
/// The server shuts down: finish what is in flight, then close.
pub(crate) const DRAIN: u8 = 1 << 1;
/// The shutdown deadline passed: close now.
pub(crate) const CUT: u8 = 1 << 2;

/// One connection's state, shared by its requests, its idle watch and the
/// accept loop (which may ask an idle connection to make room).
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Renders the 408 of a stalled upload.
    renderer: Renderer,
    /// Requests in flight plus response bodies not yet sent: the open
    /// streams.
    open: AtomicUsize,
    /// When the connection was accepted; `idle_since` counts from it.
    born: Instant,
    /// When `open` last dropped to 0, in nanoseconds since `born`. Read
    /// only when the idle timer fires, so a request costs a clock read,
    /// not a timer reset.
    idle_since: AtomicU64,
    /// What the server asks of the connection ([`EVICT`], [`DRAIN`],
    /// [`CUT`]), and the task to wake when it does. One atomic load per
    /// wake-up of the connection task, where a `Notify` per signal would
    /// take a lock each.
    signals: AtomicU8,
    waker: AtomicWaker,
    /// Asked to close, or no longer HTTP: never an eviction victim.
    evicting: AtomicBool,
    /// The protocol, once a request told.
    protocol: AtomicU8,
    /// HTTP/1.1: the current request's body has not been read to its end.
    body_unread: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(renderer: Renderer) -> Self {
        Self {
            renderer,
            open: AtomicUsize::new(0),
            born: Instant::now(),
            idle_since: AtomicU64::new(0),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            evicting: AtomicBool::new(false),
            protocol: AtomicU8::new(0),
            body_unread: AtomicBool::new(false),
        }
    }

    fn open_stream(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    pub(crate) fn body_read(&self) {
        self.body_unread.store(false, Ordering::Release);
    }

    /// When the connection has been idle since, if it is idle now.
    pub(crate) fn idle_at(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0)
            .then(|| self.born + Duration::from_nanos(self.idle_since.load(Ordering::Relaxed)))
    }

    /// Whether the connection is idle and was not asked to close yet.
    pub(crate) fn evictable(&self) -> Option<Instant> {
        if self.evicting.load(Ordering::Relaxed) {
            return None;
        }
        self.idle_at()
    }

    /// The connection left HTTP (closed or upgraded): never a victim.
    fn retire(&self) {
        self.evicting.store(true, Ordering::Relaxed);
    }

    /// Asks the connection to close gracefully.
    pub(crate) fn evict(&self) {
        self.evicting.store(true, Ordering::Relaxed);
        self.raise(EVICT);
    }

    /// Raises `signal` ([`EVICT`], [`DRAIN`] or [`CUT`]) and wakes the
    /// connection's task.
    pub(crate) fn raise(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Completes once any signal is raised.
    async fn signalled(&self) {
        std::future::poll_fn(|cx| {
            if self.poll_signals(cx) == 0 {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// The signals raised so far; the task is woken when another is.
    fn poll_signals(&self, cx: &mut Context<'_>) -> u8 {
        self.waker.register(cx.waker());
        self.signals.load(Ordering::Acquire)
    }

    fn idle_timeout(&self, limits: &Limits) -> Duration {
        match self.protocol.load(Ordering::Relaxed) {
            HTTP1 => limits.keep_alive_timeout,
            HTTP2 => limits.http2_idle_timeout,
            _ => limits.keep_alive_timeout.max(limits.http2_idle_timeout),
        }
    }

    /// Completes when no stream has been open for the idle timeout of the
    /// connection's protocol (before the first request, the longer of the
    /// two: the header read timeout bounds HTTP/1.1 there anyway). One
    /// timer, re-armed only when it fires.
    async fn idle(&self, limits: &Limits) {
        // The protocol may not be known yet: fire at the shorter timeout,
        // then re-arm for what is left.
        let first = limits.keep_alive_timeout.min(limits.http2_idle_timeout);
        let mut deadline = Instant::now() + first;
        loop {
            tokio::time::sleep_until(deadline.into()).await;
            let timeout = self.idle_timeout(limits);
            deadline = match self.idle_at() {
                Some(since) if since + timeout <= Instant::now() => return,
                Some(since) => since + timeout,
                None => Instant::now() + timeout,
            };
        }
    }
}

/// One open stream; dropped when its response body is sent (or the
/// request fails).
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let state = &self.0;
        if state.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = state.born.elapsed().as_nanos() as u64;
            state.idle_since.store(since, Ordering::Relaxed);
        }
    }
}

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve_connection<S, B>(
    tcp: TcpStream,
    remote: SocketAddr,
    service: S,
    shared: Arc<Shared>,
    slots: Slots,
    state: Arc<ConnState>,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _ = tcp.set_nodelay(true);
    let limits = shared.limits;
    // Held, not awaited, until the connection ends: shutdown waits for
    // every clone to drop. The signals themselves come through `state`.
    let drain = shared.signals.drain.clone();
    // The auto builder waits for the first bytes (HTTP/2 preface or not)
    // with no timeout of its own: a client that sends nothing would hold
    // the connection forever.
    let first_byte = async {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut byte)).await,
            Ok(Ok(1..))
        )
    };
    tokio::select! {
        () = state.signalled() => return,
        sent = first_byte => if !sent {
            tracing::debug!(target: "tower_gateway::server", %remote, "no request within the header read timeout");
            return;
        },
    }
    let io = ProgressIo::new(tcp, limits.progress_timeout, slots);
    #[cfg(feature = "tls")]
    if let Some(acceptor) = shared.acceptor.clone() {
        // Boxed: a plain connection's task then holds no room for the TLS
        // handshake and stream (rustls state runs to kilobytes).
        return Box::pin(serve_tls(
            io, acceptor, remote, service, &shared, drain, state,
        ))
        .await;
    }
    http(TokioIo::new(io), remote, service, &shared, drain, state).await;
}

/// The TLS handshake, bounded by the header read timeout, then HTTP.
#[cfg(feature = "tls")]
async fn serve_tls<S, B>(
    io: ProgressIo<TcpStream>,
    acceptor: crate::tls::ServerTls,
    remote: SocketAddr,
    service: S,
    shared: &Shared,
    drain: tokio::sync::watch::Receiver<bool>,
    state: Arc<ConnState>,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
{
    let handshake = tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(io));
    let accepted = tokio::select! {
        accepted = handshake => accepted,
        () = state.signalled() => return,
    };
    let (stream, layer) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            tracing::debug!(target: "tower_gateway::tls", %remote, %error, "tls handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!(target: "tower_gateway::tls", %remote, "tls handshake timed out");
            return;
        }
    };
    // One service type for both: a verified client's requests carry its
    // identity, an anonymous client's carry none.
    let service = match layer {
        Some(layer) => {
            if let Some(peer) = layer.identity().peer() {
                tracing::debug!(
                    target: "tower_gateway::tls",
                    %remote,
                    subject = %peer.subject,
                    sans = ?peer.sans,
                    "tls connection accepted with a verified client certificate"
                );
            }
            tower::util::Either::Left(tower_layer::Layer::layer(&layer, service))
        }
        None => {
            tracing::debug!(target: "tower_gateway::tls", %remote, "tls connection accepted");
            tower::util::Either::Right(service)
        }
    };
    http(TokioIo::new(stream), remote, service, shared, drain, state).await;
}

/// HTTP on an established connection.
async fn http<I, S, B>(
    io: I,
    remote: SocketAddr,
    service: S,
    shared: &Shared,
    drain: tokio::sync::watch::Receiver<bool>,
    state: Arc<ConnState>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = ConnService {
        inner: Edge::new(service, shared.renderer.clone()),
        state: state.clone(),
        client: ClientAddr(remote),
        progress_timeout: shared.limits.progress_timeout,
    };
    let mut conn = pin!(shared.builder.serve_connection_with_upgrades(io, service));
    let mut idle = pin!(state.idle(&shared.limits));
    let mut closing = false;
    // A signal raised before this point (a drain while the first byte was
    // awaited) is still set: it is seen on the first poll.
    let _drain = drain;
    let result = loop {
        // One poll function rather than a `select!` of a future per
        // signal: the connection is polled first, and each wake-up then
        // costs an atomic load and, while open, the idle timer's poll.
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(result));
            }
            let signals = state.poll_signals(cx);
            if signals & CUT != 0 {
                return Poll::Ready(Event::Cut);
            }
            if closing {
                return Poll::Pending;
            }
            if signals & EVICT != 0 {
                return Poll::Ready(Event::Close("closing an idle connection to make room"));
            }
            if signals & DRAIN != 0 {
                return Poll::Ready(Event::Close("closing at shutdown"));
            }
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Close("closing an idle connection"));
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done(result) => break result,
            Event::Close(why) => {
                tracing::debug!(target: "tower_gateway::server", %remote, "{why}");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            Event::Cut => {
                shared.signals.cut_one();
                tracing::debug!(target: "tower_gateway::server", %remote, "connection cut at the shutdown deadline");
                return;
            }
        }
    };
    // Over, or upgraded (the upgraded IO keeps the slots): nothing to
    // evict any more.
    state.retire();
    if let Err(error) = result {
        tracing::debug!(target: "tower_gateway::server", %remote, %error, "connection ended with an error");
    }
}

/// What ended a wait of the connection loop.
enum Event<R> {
    /// The connection is over.
    Done(R),
    /// Close gracefully, for the reason given.
    Close(&'static str),
    /// The shutdown deadline passed.
    Cut,
}

/// The per-connection hyper service: the request enters as hyper's, leaves
/// as the user service's.
struct ConnService<S> {
    inner: S,
    state: Arc<ConnState>,
    client: ClientAddr,
    progress_timeout: Duration,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<ResponseBody<B>>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<ResponseBody<B>>>;
    type Error = BoxError;
    type Future = ConnFuture<S>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.state.open_stream();
        let http1 = request.version() < Version::HTTP_2;
        self.state
            .protocol
            .store(if http1 { HTTP1 } else { HTTP2 }, Ordering::Relaxed);
        let (mut parts, incoming) = request.into_parts();
        let conn = if http1 {
            let unread = !http_body::Body::is_end_stream(&incoming);
            self.state.body_unread.store(unread, Ordering::Release);
            unread.then(|| self.state.clone())
        } else {
            None
        };
        parts.extensions.insert(self.client);
        // What a renderer may look at, should the body time out: a few
        // reference-counted clones.
        let head = Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        };
        let request = Request::from_parts(parts, Body::new(incoming, self.progress_timeout, conn));
        ConnFuture {
            call: Oneshot::new(self.inner.clone(), request),
            guard: Some(guard),
            http1,
            head,
        }
    }
}

struct Head {
    method: Method,
    uri: Uri,
    content_type: Option<HeaderValue>,
}

pin_project! {
    /// The response future of [`ConnService`].
    pub(crate) struct ConnFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        call: Oneshot<S, Request<Body>>,
        guard: Option<StreamGuard>,
        http1: bool,
        head: Head,
    }
}

impl<S, B> Future for ConnFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResponseBody<B>>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<TrackedBody<ResponseBody<B>>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.call.poll(cx));
        let Some(guard) = this.guard.take() else {
            return Poll::Ready(Err("ConnFuture polled after completion".into()));
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let error = error.into();
                if !is_body_timeout(&*error) {
                    return Poll::Ready(Err(error));
                }
                // The client stalled its upload: its fault, 408.
                let rejection = Rejection::new(
                    RejectionKind::RequestTimeout,
                    "request_body_timeout",
                    "the request body stopped arriving",
                );
                let mut headers = HeaderMap::new();
                if let Some(content_type) = this.head.content_type.take() {
                    headers.insert(header::CONTENT_TYPE, content_type);
                }
                let head = RequestHead::new(&this.head.method, &this.head.uri, &headers);
                guard
                    .0
                    .renderer
                    .render(&rejection, &head)
                    .map(ResponseBody::rejection)
            }
        };
        // RFC 9112 §9.6: the client must know that the connection will
        // close — hyper will not read the rest of the body to reuse it.
        if *this.http1 && guard.0.body_unread.load(Ordering::Acquire) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body,
            _guard: guard,
        })))
    }
}

/// Whether the client's stalled upload caused `error`.
fn is_body_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<RequestBodyTimeout>() {
            return true;
        }
        next = error.source();
    }
    false
}

pin_project! {
    /// A response body that keeps its stream counted as open until hyper
    /// has sent it (and drops it).
    pub(crate) struct TrackedBody<B> {
        #[pin]
        body: B,
        _guard: StreamGuard,
    }
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
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

    /// A signal raised before the connection task first waits (a drain
    /// while the TLS handshake runs, an eviction before the first byte) is
    /// seen on its first poll: the word is sticky, unlike a `Notify`
    /// without a waiter.
    #[tokio::test]
    async fn a_signal_raised_before_the_wait_is_seen() {
        for signal in [EVICT, DRAIN, CUT] {
            let state = ConnState::new(Renderer::default());
            state.raise(signal);
            let waited = tokio::time::timeout(Duration::from_secs(1), state.signalled()).await;
            assert!(waited.is_ok(), "signal {signal} was lost");
            // Still set for the connection loop that follows.
            let seen = std::future::poll_fn(|cx| Poll::Ready(state.poll_signals(cx))).await;
            assert_eq!(seen, signal);
        }
    }

    /// A signal raised while the task waits wakes it.
    #[tokio::test]
    async fn a_signal_raised_during_the_wait_wakes_the_task() {
        let state = Arc::new(ConnState::new(Renderer::default()));
        let waiting = tokio::spawn({
            let state = state.clone();
            async move { state.signalled().await }
        });
        tokio::task::yield_now().await;
        state.raise(DRAIN);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the drain did not wake the task")
            .unwrap();
        // Eviction marks the connection as no victim any more.
        state.evict();
        assert!(state.evictable().is_none());
    }
}
