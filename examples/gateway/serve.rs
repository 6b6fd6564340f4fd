//! The gateway's HTTP server: HTTP/1.1 and HTTP/2 (prior knowledge) on one
//! port, with the limits a server facing clients needs.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires:
//! a client that sends its headers a byte at a time (slowloris), or opens a
//! connection and sends nothing, holds it — and a task and a file
//! descriptor — forever. Here every connection must start within
//! `header_timeout`, every HTTP/1.1 request head must arrive within it, the
//! head is bounded in size (431 beyond), HTTP/2 connections are pinged, and
//! the number of open connections is capped.

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body};
use http::{Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt;
use tower_gateway::{
    connection::ClientAddr,
    reject::{Rejection, Renderer, RequestHead},
};

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time for a new connection's first byte and for each HTTP/1.1 request
    /// head (also the idle time allowed between keep-alive requests).
    pub header_timeout: Duration,
    /// Largest HTTP/1.1 request head (request line and headers); larger is
    /// answered 431. HTTP/2 header lists are bounded by hyper (16 KiB).
    pub max_head_bytes: usize,
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_head_bytes: 32 * 1024,
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until the process ends; each request carries
/// its peer as [`ClientAddr`].
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's minimum buffer is 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off rather than
                // spin (axum's loop does the same).
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // A connection that sends nothing is closed: the auto builder
            // waits for the first bytes (to tell HTTP/2 from HTTP/1.1) with no
            // timeout of its own.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let service = tower::service_fn(move |mut request: Request<Incoming>| {
                let app = app.clone();
                async move {
                    if !host_is_valid(&request) {
                        return Ok(invalid_host(&request));
                    }
                    request.extensions_mut().insert(ClientAddr(peer));
                    app.oneshot(request).await
                }
            });
            let service = TowerToHyperService::new(service);
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and it is a
/// valid authority (no user info); a server must answer 400 otherwise. hyper
/// does not check it, and routing by host, `X-Forwarded-Host` and a
/// preserved `Host` would each pick one of several values.
fn host_is_valid<B>(request: &Request<B>) -> bool {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => false,
        (Some(host), None) => {
            host.is_empty()
                || http::uri::Authority::try_from(host.as_bytes())
                    .is_ok_and(|authority| !authority.as_str().contains('@'))
        }
        // HTTP/2 carries `:authority` in the URI; HTTP/1.0 may omit `Host`.
        (None, _) => request.version() != Version::HTTP_11 || request.uri().authority().is_some(),
    }
}

fn invalid_host<B>(request: &Request<B>) -> Response<Body> {
    let rejection = Rejection::bad_request("invalid_host", "missing, repeated or invalid Host");
    Renderer::default()
        .render(&rejection, &RequestHead::of(request))
        .map(Body::from)
}
