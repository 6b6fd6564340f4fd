//! The proxy service: dispatches each request to its route's upstream.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::{
    ForwardedHeaders, ProxyBody, UpstreamBody,
    headers::add_forwarding,
    route::{RouteAttempts, RouteTimeout, RouteUpstream, StripPrefix},
};
use crate::connection::ClientAddr;
use crate::hop_by_hop::{HeaderScan, is_upgrade, known, remove_fixed, strip_response};
use crate::reject::{Rejection, RejectionKind, RequestHead};
use crate::route::Routes;

/// Forwards requests to the upstream of their route (see the [module
/// documentation](super)).
///
/// It reads the [`MatchedRoute`](crate::route::MatchedRoute) a
/// [`RouteLayer`](crate::route::RouteLayer) recorded, or matches the
/// request itself when there is none; either way, once.
#[derive(Clone)]
pub struct Proxy {
    routes: Arc<Routes>,
    forwarded: ForwardedHeaders,
    preserve_host: bool,
    https: bool,
    max_header_bytes: usize,
    report_calls: bool,
}

/// The default of [`Proxy::max_request_header_bytes`]: 32 KiB.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to the upstreams of `routes` (see [`Route::upstream`]).
    ///
    /// [`Route::upstream`]: crate::route::Route::upstream
    pub fn new(routes: &Arc<Routes>) -> Self {
        Self {
            routes: routes.clone(),
            forwarded: ForwardedHeaders::default(),
            preserve_host: false,
            https: false,
            max_header_bytes: DEFAULT_MAX_REQUEST_HEADER_BYTES,
            report_calls: false,
        }
    }

    /// Refuses requests whose headers are larger than `bytes` (counted as
    /// HTTP/2 does: name, value and 32 bytes per field) with 400 before they
    /// reach an upstream (default 32 KiB).
    ///
    /// Upstreams enforce limits of their own (hyper's HTTP/2 default is
    /// 16 KiB); one that is exceeded by far may answer with a connection
    /// error instead of a 431, and over a shared HTTP/2 connection that fails
    /// every other client's request in flight on it — and counts against the
    /// endpoint's circuit breaker. Oversized headers are the client's fault,
    /// so they are refused here.
    pub fn max_request_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Puts an [`UpstreamCall`](crate::access_log::UpstreamCall) (the
    /// endpoint that answered, the attempts made) into the extensions of
    /// each upstream response, where an
    /// [`AccessLogLayer`](crate::access_log::AccessLogLayer) logs it. Off by
    /// default: it costs an allocation per response.
    pub fn report_upstream_calls(mut self, yes: bool) -> Self {
        self.report_calls = yes;
        self
    }

    /// Which forwarding headers to send (default `X-Forwarded-*`).
    pub fn forwarded_headers(mut self, style: ForwardedHeaders) -> Self {
        self.forwarded = style;
        self
    }

    /// Sends the client's `Host` to the upstream instead of the endpoint's
    /// authority (Kong's `preserve_host`).
    pub fn preserve_host(mut self, yes: bool) -> Self {
        self.preserve_host = yes;
        self
    }

    /// Whether clients reach the gateway over TLS (`X-Forwarded-Proto`).
    pub fn client_https(mut self, yes: bool) -> Self {
        self.https = yes;
        self
    }

    fn refuse<B>(&self, request: &Request<B>, rejection: Rejection) -> ProxyFuture {
        let response = rejection.into_response(&RequestHead::of(request));
        ProxyFuture {
            state: State::Refused(Some(response)),
        }
    }
}

type Sent = Pin<Box<dyn Future<Output = Response<UpstreamBody>> + Send>>;

/// The response future of [`Proxy`]: a refusal answered at once, or the
/// upstream call (one allocation per forwarded request), whose response
/// loses its hop-by-hop headers — or, on `101 Switching Protocols`, is
/// spliced to the client's upgraded connection.
pub struct ProxyFuture {
    state: State,
}

enum State {
    Refused(Option<Response<UpstreamBody>>),
    Sending {
        sent: Sent,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    },
}

impl fmt::Debug for ProxyFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyFuture").finish_non_exhaustive()
    }
}

impl Future for ProxyFuture {
    type Output = Result<Response<UpstreamBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin`: the boxed call, the upgrade handle.
        match &mut self.get_mut().state {
            State::Refused(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            State::Sending { sent, upgrade } => {
                let mut response = std::task::ready!(sent.as_mut().poll(cx));
                if let Some(client_upgrade) = upgrade.take()
                    && response.status() == StatusCode::SWITCHING_PROTOCOLS
                {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
                } else {
                    strip_response(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

fn box_body<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    body.map_err(|error| -> tower::BoxError { error.into() })
        .boxed_unsync()
}

impl<B> Service<Request<B>> for Proxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Which upstream serves a request is known only in `call`; each call
        // drives its upstream's readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Before anything is forwarded: a header section an upstream may
        // answer with a connection error (see `max_request_header_bytes`).
        // One pass over the header names tells what the steps below would
        // otherwise look up one by one.
        let scan = HeaderScan::of(request.headers());
        if scan.list_size() > self.max_header_bytes {
            return self.refuse(
                &request,
                Rejection::new(
                    RejectionKind::HeadersTooLarge,
                    "headers_too_large",
                    "request headers too large",
                ),
            );
        }
        // RFC 9112 §3.2: more than one `Host` is a 400. Routing reads the
        // first; a preserved `Host` would pass both on for the upstream to
        // pick one.
        if scan.hosts() > 1 {
            return self.refuse(
                &request,
                Rejection::bad_request("invalid_host", "more than one Host header"),
            );
        }
        let matched = match self.routes.resolve(&mut request) {
            Ok(matched) => matched,
            Err(rejection) => return self.refuse(&request, rejection),
        };
        let Some(RouteUpstream(upstream)) = matched.setting::<RouteUpstream>() else {
            // A route without an upstream is a configuration error, not the
            // client's: answered as the gateway's own failure.
            return self.refuse(
                &request,
                Rejection::new(
                    RejectionKind::BadGateway,
                    "no_upstream",
                    "the route has no upstream",
                ),
            );
        };
        let upstream = upstream.clone();
        let timeout = match matched.setting::<RouteTimeout>() {
            Some(RouteTimeout(limit)) => (*limit).min(upstream.request_timeout()),
            None => upstream.request_timeout(),
        };
        let attempts = matched.setting::<RouteAttempts>().map(|a| a.0);

        if matched.setting::<StripPrefix>().is_some() {
            strip_prefix(request.uri_mut(), matched.route().prefix_str());
        }
        let upgrade = scan.has(known::UPGRADE) && is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        // RFC 9112 §3.2.2: for an absolute-form target (and HTTP/2's
        // `:authority`) the URI's authority is the host; a `Host` header
        // beside it is ignored — as the route table does. User info is
        // never part of it.
        let original_host = match request.uri().host() {
            Some(host) => {
                let value = match request.uri().port_u16() {
                    Some(port) => http::HeaderValue::try_from(format!("{host}:{port}")),
                    None => http::HeaderValue::from_str(host),
                };
                value.ok()
            }
            None => request.headers().get(header::HOST).cloned(),
        };
        let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
        let headers = request.headers_mut();
        // The edge removed what the client named in `Connection` before any
        // layer ran; removing it here would remove what the layers set.
        if scan.has(known::HOP_BY_HOP) {
            remove_fixed(headers, upgrade);
        }
        add_forwarding(
            headers,
            &scan,
            self.forwarded,
            client,
            if self.https { "https" } else { "http" },
            original_host.as_ref(),
        );
        // The upstream gets its endpoint's authority as `Host`, unless the
        // client's is preserved.
        if scan.has(known::HOST) {
            headers.remove(header::HOST);
        }
        if self.preserve_host
            && let Some(host) = original_host
        {
            headers.insert(header::HOST, host);
        }
        let request: Request<ProxyBody> = request.map(box_body);
        ProxyFuture {
            state: State::Sending {
                sent: Box::pin(upstream.send(request, timeout, attempts, self.report_calls)),
                upgrade: client_upgrade,
            },
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the
/// upgraded upstream connection until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(target: "tower_gateway::proxy", %error, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(target: "tower_gateway::proxy", %error, "upgraded connection ended");
    }
}

fn strip_prefix(uri: &mut Uri, prefix: &str) {
    if prefix == "/" {
        return;
    }
    let path = uri.path();
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest };
    let pq = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}
