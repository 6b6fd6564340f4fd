//! What the server knows about the connection a request came on.

use std::net::SocketAddr;

/// The address of the peer that opened the connection — the client, or the
/// last proxy in front of the gateway.
///
/// The server puts it into request extensions (`server::serve` does, over
/// TLS too; with axum, `map_request` from `ConnectInfo`; with hyper-util, in the
/// accept loop). The proxy appends it to `X-Forwarded-For`/`Forwarded` as
/// the hop it received the request from.
///
/// Layers that need the *client* (rate limiting, the auth failure budget,
/// logs) read the [`ResolvedClient`](crate::client_addr::ResolvedClient)
/// instead: the client a [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer)
/// resolved behind trusted proxies, or this peer when there is no such
/// layer.
///
/// ```
/// use tower_gateway::connection::ClientAddr;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(ClientAddr("192.0.2.7:50123".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The error a request body yields when the client stopped sending it: no
/// frame arrived within the server's progress timeout.
///
/// The server's request body produces it; the proxy recognises it anywhere
/// in an error's source chain and answers 408, never 504, and never counts
/// it against the upstream's circuit breaker or retry budget — the client
/// stalled, not the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct RequestBodyTimeout(pub std::time::Duration);
