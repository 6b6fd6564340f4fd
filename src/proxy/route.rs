//! The route table: which upstream serves a request.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, header};
use tower_layer::Layer;
use tower_service::Service;

use super::{ProxyError, UpstreamService};
use crate::{
    path::{self, NormalizedPath, normalize},
    route::RouteTemplate,
};

/// One route: an optional host, a path prefix matched on whole segments,
/// optional methods, and what to do with the prefix.
///
/// ```
/// use http::Method;
/// use tower_gateway::proxy::Route;
///
/// let orders = Route::prefix("/orders").methods([Method::GET, Method::POST]);
/// let api = Route::prefix("/api/payments").strip_prefix().name("payments");
/// let tenant = Route::prefix("/").host("shop.example.com");
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    prefix: String,
    host: Option<String>,
    methods: Vec<Method>,
    strip_prefix: bool,
    name: Option<String>,
    timeout: Option<std::time::Duration>,
}

impl Route {
    /// Requests whose normalized path is `prefix` or below it (`/orders`
    /// matches `/orders` and `/orders/7`, never `/ordersX`).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            host: None,
            methods: Vec::new(),
            strip_prefix: false,
            name: None,
            timeout: None,
        }
    }

    /// Only requests for this host (`Host` header or URI authority, port
    /// ignored, case-insensitive); `*.example.com` matches one or more
    /// labels under `example.com`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into().to_ascii_lowercase());
        self
    }

    /// Only these methods (a route for `GET` also serves `HEAD`); others get
    /// 405 with `Allow` (default: all).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Removes the prefix before forwarding: `/api/payments/7` reaches the
    /// upstream as `/7`.
    pub fn strip_prefix(mut self) -> Self {
        self.strip_prefix = true;
        self
    }

    /// A request timeout for this route, tighter than its upstream's
    /// (`Upstream::request_timeout` still applies): when the response head
    /// has not arrived in time the client gets 504 (gRPC
    /// `DEADLINE_EXCEEDED`). Connect timeouts belong to the upstream's
    /// connection pool.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The route's name in metrics (`RouteTemplate`); default: the prefix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

struct Entry {
    route: Route,
    template: RouteTemplate,
    upstream: UpstreamService,
}

/// An ordered set of routes; the most specific match wins (a host route
/// over a host-less one, then the longest prefix).
///
/// Share it between a [`RouteLayer`] (outermost: matches once, so metrics,
/// RBAC and rate limits know the route) and the [`Proxy`](super::Proxy)
/// that dispatches.
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.route))
            .finish()
    }
}

/// Builds a [`RouteTable`].
#[derive(Default)]
pub struct RouteTableBuilder {
    entries: Vec<(Route, UpstreamService)>,
}

impl std::fmt::Debug for RouteTableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTableBuilder").finish_non_exhaustive()
    }
}

impl RouteTableBuilder {
    /// Adds a route to `upstream`.
    pub fn route(mut self, route: Route, upstream: UpstreamService) -> Self {
        self.entries.push((route, upstream));
        self
    }

    /// Checks the routes and builds the table.
    pub fn build(self) -> Result<Arc<RouteTable>, ProxyError> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (mut route, upstream) in self.entries {
            // Prefixes go through the request normalization, so a prefix can
            // never be spelled in a way no request matches.
            let normalized = normalize(&route.prefix)
                .map_err(|_| ProxyError::InvalidRoute(route.prefix.clone()))?;
            let prefix = normalized.as_str().trim_end_matches('/');
            route.prefix = if prefix.is_empty() {
                "/".into()
            } else {
                prefix.into()
            };
            let template =
                RouteTemplate::new(route.name.clone().unwrap_or_else(|| route.prefix.clone()));
            entries.push(Entry {
                route,
                template,
                upstream,
            });
        }
        Ok(Arc::new(RouteTable { entries }))
    }
}

/// The outcome of matching a request.
#[derive(Debug, Clone)]
pub enum RouteMatch {
    /// Route number `index` serves it.
    Found(usize),
    /// Routes exist for the path, not for the method; `Allow` lists theirs.
    MethodNotAllowed(http::HeaderValue),
    /// No route.
    NotFound,
}

fn host_of<B>(request: &Request<B>) -> Option<&str> {
    // RFC 9112 §3.2.2: an absolute-form target's authority (HTTP/2's
    // `:authority`) wins over `Host`, as the upstream hop sees it.
    let raw = request.uri().host().or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })?;
    // Strip the port (keeping IPv6 brackets intact). Patterns are lower
    // case; hosts are compared ignoring ASCII case, with no copy.
    let host = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    };
    Some(host.trim_end_matches('.'))
}

fn host_matches(pattern: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn method_allowed(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl RouteTable {
    /// Starts a table.
    pub fn builder() -> RouteTableBuilder {
        RouteTableBuilder::default()
    }

    /// Matches a request whose path is already normalized.
    pub fn find<B>(&self, request: &Request<B>, path: &NormalizedPath) -> RouteMatch {
        let host = host_of(request);
        let mut best: Option<(usize, (bool, usize))> = None;
        let mut allow: Vec<Method> = Vec::new();
        let mut path_matched = false;
        for (index, entry) in self.entries.iter().enumerate() {
            let route = &entry.route;
            if let Some(pattern) = &route.host
                && !host_matches(pattern, host)
            {
                continue;
            }
            if !prefix_matches(&route.prefix, path.as_str()) {
                continue;
            }
            path_matched = true;
            if !route.methods.is_empty() && !method_allowed(&route.methods, request.method()) {
                allow.extend(route.methods.iter().cloned());
                if route.methods.contains(&Method::GET) {
                    allow.push(Method::HEAD);
                }
                continue;
            }
            let rank = (route.host.is_some(), route.prefix.len());
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((index, rank));
            }
        }
        match best {
            Some((index, _)) => RouteMatch::Found(index),
            None if path_matched => {
                allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                allow.dedup();
                let list = allow
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                RouteMatch::MethodNotAllowed(
                    http::HeaderValue::from_str(&list)
                        .unwrap_or(http::HeaderValue::from_static("")),
                )
            }
            None => RouteMatch::NotFound,
        }
    }

    pub(crate) fn entry(&self, index: usize) -> Option<(&Route, &RouteTemplate, &UpstreamService)> {
        self.entries
            .get(index)
            .map(|e| (&e.route, &e.template, &e.upstream))
    }

    /// Normalizes the request path (rewriting the URI) and matches it,
    /// recording the result and the route template in the extensions.
    /// `None` when the path must be refused (400).
    pub(crate) fn annotate<B>(&self, request: &mut Request<B>) -> Option<RouteMatch> {
        if let Some(found) = request.extensions().get::<RouteMatch>() {
            return Some(found.clone());
        }
        let path = path::apply(request).ok()?;
        let found = self.find(request, &path);
        if let RouteMatch::Found(index) = found
            && let Some((_, template, _)) = self.entry(index)
        {
            request.extensions_mut().insert(template.clone());
        }
        request.extensions_mut().insert(found.clone());
        Some(found)
    }
}

impl Route {
    pub(crate) fn prefix_str(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn request_timeout(&self) -> Option<std::time::Duration> {
        self.timeout
    }

    pub(crate) fn strips_prefix(&self) -> bool {
        self.strip_prefix
    }
}

/// Matches each request against a [`RouteTable`] once, early in the stack:
/// normalizes the path, and records the [`RouteTemplate`] (for metrics, RBAC
/// and rate limits) and the match (for the [`Proxy`](super::Proxy)). Never
/// refuses anything itself.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    /// Matches against `table`.
    pub fn new(table: &Arc<RouteTable>) -> Self {
        Self {
            table: table.clone(),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteMatcher<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteMatcher {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct RouteMatcher<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S, B> Service<Request<B>> for RouteMatcher<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let _ = self.table.annotate(&mut request);
        self.inner.call(request)
    }
}

/// Answers requests that no route serves — 404, 405 with `Allow`, 400 for
/// a path that cannot be normalized — before they reach authentication, the
/// way Kong answers "no Route matched" whatever the plugins. Place it after
/// [`RouteLayer`] (and after metrics, so those answers are counted).
#[derive(Debug, Clone)]
pub struct RequireRouteLayer {
    table: Arc<RouteTable>,
}

impl RequireRouteLayer {
    /// Requires a route of `table`.
    pub fn new(table: &Arc<RouteTable>) -> Self {
        Self {
            table: table.clone(),
        }
    }
}

impl<S> Layer<S> for RequireRouteLayer {
    type Service = RequireRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireRoute {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service of [`RequireRouteLayer`].
#[derive(Debug, Clone)]
pub struct RequireRoute<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S, B, ResBody> Service<Request<B>> for RequireRoute<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = crate::reject::ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        use crate::reject::{Rejection, RejectionKind, RequestHead, ResponseFuture};
        let rejection = match self.table.annotate(&mut request) {
            Some(RouteMatch::Found(_)) => return ResponseFuture::inner(self.inner.call(request)),
            Some(RouteMatch::MethodNotAllowed(allow)) => Rejection::new(
                RejectionKind::MethodNotAllowed,
                "method_not_allowed",
                "method not allowed",
            )
            .with_header(header::ALLOW, allow),
            Some(RouteMatch::NotFound) => {
                Rejection::new(RejectionKind::NotFound, "no_route", "no route")
            }
            None => {
                let detail = path::normalize(request.uri().path())
                    .err()
                    .map_or_else(|| "invalid path".to_owned(), |e| e.to_string());
                Rejection::bad_request("invalid_path", detail)
            }
        };
        ResponseFuture::rejected(rejection.into_response(&RequestHead::of(&request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_prefixes_match_on_boundaries() {
        assert!(host_matches("*.example.com", Some("a.example.com")));
        assert!(host_matches("*.example.com", Some("a.b.example.com")));
        assert!(!host_matches("*.example.com", Some("example.com")));
        assert!(!host_matches("*.example.com", Some("evilexample.com")));
        assert!(prefix_matches("/orders", "/orders"));
        assert!(prefix_matches("/orders", "/orders/7"));
        assert!(!prefix_matches("/orders", "/ordersX"));
        assert!(prefix_matches("/", "/anything"));
    }
}
