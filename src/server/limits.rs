//! The server's limits towards clients.

use std::time::Duration;

/// The timeouts and caps of [`serve`](super::serve); every wait a client
/// can cause has a deadline here.
///
/// Set them one by one on [`Serve`](super::Serve), or all at once with
/// [`Serve::limits`](super::Serve::limits).
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::server::Limits;
///
/// let limits = Limits {
///     header_read_timeout: Duration::from_secs(5),
///     ..Limits::default()
/// };
/// assert_eq!(limits.max_connections, 10_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a new connection's first byte (and its TLS handshake), and
    /// for each HTTP/1.1 request head (default 10 s). Slower clients
    /// (slowloris) are disconnected.
    ///
    /// hyper starts this timer also while it waits for the next request
    /// head on a kept-alive HTTP/1.1 connection, so an idle HTTP/1.1
    /// connection is closed after the shorter of this and
    /// [`keep_alive_timeout`](Self::keep_alive_timeout).
    pub header_read_timeout: Duration,
    /// How long an HTTP/1.1 connection may idle between requests (default
    /// 60 s, but see [`header_read_timeout`](Self::header_read_timeout)).
    pub keep_alive_timeout: Duration,
    /// How long an HTTP/2 connection may have no open stream before it is
    /// closed with a GOAWAY (default 60 s) — even if it answers PINGs.
    pub http2_idle_timeout: Duration,
    /// Open connections at most (default 10 000); further clients wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// Open connections of one client IP address at most (default 1 024,
    /// a tenth of `max_connections`); further connections from it are
    /// closed at once, so that one client cannot take every slot. IPv6
    /// clients are counted per /64 network. Behind a load balancer every
    /// client shares its address: raise it, or set it to
    /// `max_connections`.
    pub max_connections_per_ip: usize,
    /// How long a client may stall (default 30 s): stop sending a request
    /// body it announced (its body then fails with
    /// [`RequestBodyTimeout`](crate::connection::RequestBodyTimeout)), or
    /// stop reading the response (the connection is closed once a write to
    /// it stalls that long). Over HTTP/2, a client that stops reading one
    /// response while reading others stalls only that stream (flow
    /// control), which this does not bound.
    pub progress_timeout: Duration,
    /// The largest request head (default 16 KiB, hyper's HTTP/2 default):
    /// HTTP/1.1 request line and headers (hyper's read buffer, at least
    /// 8 KiB), HTTP/2 header list. Larger heads are answered 431.
    pub max_head_bytes: usize,
    /// Concurrent streams per HTTP/2 connection at most (default 256).
    pub max_concurrent_streams: u32,
    /// After the shutdown signal, how long in-flight requests may take to
    /// finish (default 30 s); the connections still open then are cut.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            http2_idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 1024,
            progress_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
            max_concurrent_streams: 256,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}
