//! The accept loop and its builder.

use std::{
    collections::HashMap,
    fmt,
    future::{Future, IntoFuture, Pending},
    io,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower_service::Service;

use super::{
    BoxError, Limits, ShutdownReport,
    body::Body,
    conn::{CUT, ConnState, DRAIN, Shared, serve_connection},
    shutdown::Shutdown,
};
use crate::reject::Renderer;

/// The pause after an accept error that is not about one connection
/// (`EMFILE`: out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How often a connection waiting for a slot looks for an idle one to
/// make room.
const EVICTION_RETRY: Duration = Duration::from_millis(100);
/// How often an HTTP/2 connection is pinged, and how long the answer may
/// take: a peer that is gone is noticed even with no stream open.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener`: HTTP/1.1 and HTTP/2 (by prior knowledge
/// or ALPN), with upgrades, with the [`Limits`] and the
/// [`EdgeLayer`](super::EdgeLayer) every server facing clients needs.
///
/// `service` is any `tower` service of `http::Request<`[`Body`]`>` that can
/// be cloned per connection and per request: an axum `Router`, tonic's
/// `Routes`, a `ServiceBuilder` stack. Every request carries the
/// connection's [`ClientAddr`](crate::connection::ClientAddr) in its
/// extensions.
///
/// Configure the returned [`Serve`], then await it: it runs until its
/// [shutdown signal](Serve::with_graceful_shutdown), and reports how the
/// shutdown went. See the [module documentation](super) for an example.
pub fn serve<S>(listener: TcpListener, service: S) -> Serve<S, Pending<()>> {
    Serve {
        listener,
        service,
        limits: Limits::default(),
        renderer: Renderer::default(),
        signal: std::future::pending(),
        #[cfg(feature = "tls")]
        acceptor: None,
    }
}

/// The server of [`serve`]: its configuration, then (awaited) its accept
/// loop.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<S, F> {
    listener: TcpListener,
    service: S,
    limits: Limits,
    renderer: Renderer,
    signal: F,
    #[cfg(feature = "tls")]
    acceptor: Option<crate::tls::ServerTls>,
}

impl<S, F> fmt::Debug for Serve<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Serve");
        debug
            .field("listener", &self.listener)
            .field("limits", &self.limits);
        #[cfg(feature = "tls")]
        debug.field("tls", &self.acceptor.is_some());
        debug.finish_non_exhaustive()
    }
}

impl<S> Serve<S, Pending<()>> {
    /// Shuts down when `signal` completes: stops accepting (new
    /// connections are refused), asks every connection to finish (HTTP/2
    /// GOAWAY, HTTP/1.1 `Connection: close` on the current response), lets
    /// in-flight requests finish until the
    /// [shutdown timeout](Self::shutdown_timeout), then closes what is
    /// left; the loop completes with a [`ShutdownReport`].
    ///
    /// Upgraded connections (WebSocket) belong to the service once
    /// switched: they count against the connection caps while open, but
    /// are neither asked to finish nor cut. Dropping the running loop
    /// (aborting its task) stops accepting and asks connections to finish,
    /// with no deadline.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> Serve<S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            limits: self.limits,
            renderer: self.renderer,
            signal,
            #[cfg(feature = "tls")]
            acceptor: self.acceptor,
        }
    }
}

impl<S, F> Serve<S, F> {
    /// All limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// See [`Limits::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_read_timeout = timeout;
        self
    }

    /// See [`Limits::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.limits.keep_alive_timeout = timeout;
        self
    }

    /// See [`Limits::http2_idle_timeout`].
    pub fn http2_idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.http2_idle_timeout = timeout;
        self
    }

    /// See [`Limits::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// See [`Limits::max_connections_per_ip`].
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.limits.max_connections_per_ip = max;
        self
    }

    /// See [`Limits::progress_timeout`].
    pub fn progress_timeout(mut self, timeout: Duration) -> Self {
        self.limits.progress_timeout = timeout;
        self
    }

    /// See [`Limits::max_head_bytes`].
    pub fn max_head_bytes(mut self, max: usize) -> Self {
        self.limits.max_head_bytes = max;
        self
    }

    /// See [`Limits::max_concurrent_streams`].
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.limits.max_concurrent_streams = max;
        self
    }

    /// See [`Limits::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.limits.shutdown_timeout = timeout;
        self
    }

    /// Renders the [`EdgeLayer`](super::EdgeLayer)'s refusals (and 408s
    /// for stalled uploads) with `renderer` rather than problem JSON.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Serves over TLS: with a [`TlsAcceptor`](crate::tls::TlsAcceptor),
    /// ordinary HTTPS (no client certificate, or an optional one); with an
    /// [`MtlsAcceptor`](crate::tls::MtlsAcceptor), mutual TLS (a client
    /// certificate required). On a connection whose client certificate
    /// was verified, every request carries the peer's
    /// [`Identity`](crate::identity::Identity) and
    /// [`PeerIdentity`](crate::identity::PeerIdentity) (see
    /// [`PeerIdentityLayer`](crate::tls::PeerIdentityLayer)). ALPN picks
    /// HTTP/2 or HTTP/1.1. The handshake must complete within the
    /// [header read timeout](Self::header_read_timeout); refused handshakes
    /// are logged at `debug` (target `tower_gateway::tls`) and never reach
    /// the service.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use tokio::net::TcpListener;
    /// use tower_gateway::{server, tls::{ReloadingServerCertificate, TlsAcceptor}};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let certificate = ReloadingServerCertificate::from_files(
    ///     "/etc/gateway/fullchain.pem",
    ///     "/etc/gateway/privkey.pem",
    /// )?;
    /// let _poller = certificate.watch(Duration::from_secs(60));
    /// let app = Router::new().route("/", get(|| async { "hello" }));
    /// let listener = TcpListener::bind("0.0.0.0:443").await?;
    /// server::serve(listener, app)
    ///     .tls(TlsAcceptor::new(&certificate))
    ///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
    ///     .await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, acceptor: impl Into<crate::tls::ServerTls>) -> Self {
        self.acceptor = Some(acceptor.into());
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S, F, B> IntoFuture for Serve<S, F>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = ShutdownReport;
    type IntoFuture = Pin<Box<dyn Future<Output = ShutdownReport> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper never times out a request head.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses a buffer under 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
    builder
}

async fn run<S, F, B>(serve: Serve<S, F>) -> ShutdownReport
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    let Serve {
        listener,
        service,
        limits,
        renderer,
        signal,
        #[cfg(feature = "tls")]
        acceptor,
    } = serve;
    let mut signal = pin!(signal);
    let (shutdown, signals) = Shutdown::new();
    let shared = Arc::new(Shared {
        builder: builder(&limits),
        limits,
        renderer,
        signals,
        #[cfg(feature = "tls")]
        acceptor,
    });
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    let registry = Arc::new(Registry::new(limits.max_connections_per_ip.max(1)));
    // Connections are asked to finish when the loop ends, also when it is
    // dropped (see `with_graceful_shutdown`).
    let drain = DrainOnDrop(registry.clone());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = signal.as_mut() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::error!(target: "tower_gateway::server", %error, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = signal.as_mut() => break,
                }
            }
        };
        // At the cap, the longest-idle connection is asked to make room
        // for this one; with none idle, this one waits for a slot (and
        // the clients behind it in the listen backlog).
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break Some(slot);
            }
            // A busy connection may turn idle while this one waits: look
            // again now and then.
            registry.evict_idle(None);
            tokio::select! {
                slot = slots.clone().acquire_owned() => break slot.ok(),
                () = tokio::time::sleep(EVICTION_RETRY) => {}
                () = signal.as_mut() => break None,
            }
        };
        let Some(slot) = slot else { break };
        let state = Arc::new(ConnState::new(shared.renderer.clone()));
        let Some(registration) = registry.admit(client_key(remote.ip()), &state) else {
            tracing::debug!(
                target: "tower_gateway::server",
                %remote,
                "connection refused: the client's IP holds its maximum of busy connections"
            );
            continue;
        };
        let slots = Slots {
            _all: slot,
            _registration: registration,
        };
        tokio::spawn(serve_connection(
            tcp,
            remote,
            service.clone(),
            shared.clone(),
            slots,
            state,
        ));
    }
    // New connections are refused from here on.
    drop(listener);
    drop(shared);
    let open = max_connections - slots.available_permits();
    drop(drain);
    shutdown
        .run(open, limits.shutdown_timeout, || registry.raise_all(CUT))
        .await
}

/// Errors about one connection that came and went before it was accepted;
/// the listener is fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Whose connection it is, for the per-IP cap: an IPv4 address (also when
/// mapped into IPv6), or an IPv6 /64 — the network one subscriber gets
/// (RFC 6177), whose addresses cost a client nothing to switch between.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// A connection's places under the caps, given back when dropped.
/// What an open connection holds: a slot under the overall cap and its
/// place in the registry (the per-IP count). Dropped with the
/// connection's IO, so an upgraded connection still holds them.
#[derive(Debug)]
pub(crate) struct Slots {
    _all: OwnedSemaphorePermit,
    _registration: Registration,
}

/// The open connections: how many each client IP holds, and each one's
/// state, so that an idle connection can be asked to make room for a new
/// one — idle keep-alive connections are the cheapest to give up (as
/// nginx reuses them under `worker_connections` pressure), and a flood of
/// idle connections must not lock out a client that has work to do.
#[derive(Debug)]
struct Registry {
    max_per_ip: usize,
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    per_ip: HashMap<IpAddr, usize>,
    conns: HashMap<u64, (IpAddr, Arc<ConnState>)>,
    next_id: u64,
}

impl RegistryInner {
    /// The connection idle the longest (of `ip`, if given), not already
    /// asked to close.
    fn longest_idle(&self, ip: Option<IpAddr>) -> Option<&Arc<ConnState>> {
        self.conns
            .values()
            .filter(|(key, _)| ip.is_none_or(|ip| ip == *key))
            .filter_map(|(_, state)| state.evictable().map(|since| (since, state)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, state)| state)
    }
}

impl Registry {
    fn new(max_per_ip: usize) -> Self {
        Self {
            max_per_ip,
            inner: Mutex::new(RegistryInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection of `ip`. At the per-IP cap, the IP's
    /// longest-idle connection is asked to close and the new one admitted
    /// in its place; with none idle, the new one is refused.
    fn admit(self: &Arc<Self>, ip: IpAddr, state: &Arc<ConnState>) -> Option<Registration> {
        let mut inner = self.lock();
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            inner.longest_idle(Some(ip))?.evict();
        }
        *inner.per_ip.entry(ip).or_insert(0) += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, (ip, state.clone()));
        Some(Registration {
            registry: self.clone(),
            ip,
            id,
        })
    }

    /// Raises `signal` on every open connection.
    fn raise_all(&self, signal: u8) {
        for (_, state) in self.lock().conns.values() {
            state.raise(signal);
        }
    }

    /// Asks the longest-idle connection (of `ip`, if given) to close.
    fn evict_idle(&self, ip: Option<IpAddr>) -> bool {
        let inner = self.lock();
        let victim = inner.longest_idle(ip);
        if let Some(victim) = victim {
            victim.evict();
        }
        victim.is_some()
    }
}

/// Raises [`DRAIN`] on every open connection when dropped: when the accept
/// loop ends, by the shutdown signal or because its future was dropped.
struct DrainOnDrop(Arc<Registry>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.raise_all(DRAIN);
    }
}

/// A connection's place in the [`Registry`].
#[derive(Debug)]
struct Registration {
    registry: Arc<Registry>,
    ip: IpAddr,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.conns.remove(&self.id);
        if let Some(count) = inner.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                inner.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
