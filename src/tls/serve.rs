//! The accept loop: mutual TLS, then HTTP/1.1 or HTTP/2 with hyper-util,
//! the verified identity in every request.

use std::{
    fmt,
    future::{Future, IntoFuture, Pending, pending},
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower_layer::Layer;
use tower_service::Service;

use super::MtlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client may take to complete the TLS handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after an accept error that is not about one connection
/// (`EMFILE`: out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `service` over mutual TLS on `listener`: every connection must
/// present a client certificate that chains to the acceptor's private
/// CA, and every request on it carries the verified
/// [`Identity`](crate::identity::Identity) and
/// [`PeerIdentity`](crate::identity::PeerIdentity) in its extensions (see
/// [`PeerIdentityLayer`](super::PeerIdentityLayer)), and the
/// connection's [`ClientAddr`](crate::connection::ClientAddr).
///
/// `service` is any `tower` service of `http::Request<hyper::body::Incoming>`
/// that can be cloned per connection: an axum `Router`, tonic's `Routes`, a
/// `ServiceBuilder` stack. HTTP/1.1 and HTTP/2 are both served (hyper-util's
/// `auto` builder), with HTTP upgrades.
///
/// Await the returned [`Serve`] to run the loop; it runs until the
/// [graceful shutdown](Serve::with_graceful_shutdown) signal, if any.
/// Refused handshakes are logged at `debug` (target `tower_gateway::tls`)
/// and never reach the service.
///
/// ```no_run
/// use axum::{Extension, Router, routing::get};
/// use tokio::net::TcpListener;
/// use tower_gateway::{identity::PeerIdentity, tls::{self, MtlsAcceptor}};
///
/// # async fn f(acceptor: MtlsAcceptor) -> std::io::Result<()> {
/// let app = Router::new().route(
///     "/whoami",
///     get(|Extension(peer): Extension<PeerIdentity>| async move { peer.subject }),
/// );
/// let listener = TcpListener::bind("127.0.0.1:8443").await?;
/// tls::serve(listener, acceptor, app)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await;
/// # Ok(()) }
/// ```
pub fn serve<S>(
    listener: TcpListener,
    acceptor: MtlsAcceptor,
    service: S,
) -> Serve<S, Pending<()>> {
    Serve {
        listener,
        acceptor,
        service,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        signal: pending(),
    }
}

/// The accept loop of [`serve`]; await it to run it.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<S, F> {
    listener: TcpListener,
    acceptor: MtlsAcceptor,
    service: S,
    handshake_timeout: Duration,
    signal: F,
}

impl<S, F> fmt::Debug for Serve<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("acceptor", &self.acceptor)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S, Pending<()>> {
    /// Stops accepting when `signal` completes, asks every connection to
    /// finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response),
    /// and completes when they have.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> Serve<S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            acceptor: self.acceptor,
            service: self.service,
            handshake_timeout: self.handshake_timeout,
            signal,
        }
    }
}

impl<S, F> Serve<S, F> {
    /// How long a client may take to complete the TLS handshake (default
    /// 10 s); a slower one is disconnected.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S, F, B> IntoFuture for Serve<S, F>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

async fn run<S, F, B>(serve: Serve<S, F>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    let Serve {
        listener,
        acceptor,
        service,
        handshake_timeout,
        signal,
    } = serve;
    let mut signal = pin!(signal);
    // Every connection holds a receiver: a send asks them to finish, and
    // `closed` completes when the last one has.
    let (shutdown, connections) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = signal.as_mut() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::error!(target: "tower_gateway::tls", %error, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = signal.as_mut() => break,
                }
            }
        };
        tokio::spawn(connection(
            tcp,
            remote,
            acceptor.clone(),
            service.clone(),
            handshake_timeout,
            connections.clone(),
        ));
    }
    drop(listener);
    drop(connections);
    shutdown.send_replace(());
    shutdown.closed().await;
}

/// One connection: handshake (bounded in time), then HTTP until the
/// client leaves or shutdown is asked.
async fn connection<S, B>(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: MtlsAcceptor,
    service: S,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        _ = shutdown.changed() => return,
    };
    let accepted = match outcome {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(error)) => {
            tracing::debug!(
                target: "tower_gateway::tls",
                %remote,
                %error,
                "tls handshake refused"
            );
            return;
        }
        Err(_) => {
            tracing::debug!(
                target: "tower_gateway::tls",
                %remote,
                "tls handshake timed out"
            );
            return;
        }
    };
    tracing::debug!(
        target: "tower_gateway::tls",
        %remote,
        subject = %accepted.peer().subject,
        sans = ?accepted.peer().sans,
        "mtls connection accepted"
    );
    let (stream, layer) = accepted.into_parts();
    // Every request also carries the connection's peer address, for rate
    // limits and forwarding headers.
    let client = crate::connection::ClientAddr(remote);
    let service = tower::util::MapRequest::new(
        layer.layer(service),
        move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(client);
            request
        },
    );
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper never times out a slow request head: a client
    // could hold the connection (and its task) forever, slowloris-style.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(
            target: "tower_gateway::tls",
            %remote,
            %error,
            "connection ended with an error"
        );
    }
}

/// Errors about one connection that came and went before it was accepted;
/// the listener is fine (the same list as hyper's and axum's loops).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
