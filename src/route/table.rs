use std::{fmt, sync::Arc};

use http::{Extensions, HeaderValue, Method, Request, header};

use super::RouteTemplate;
use crate::{
    path,
    reject::{Rejection, RejectionKind},
};

/// One route: which requests it takes, and the settings of the layers that
/// act on them (see the [module documentation](super)).
///
/// ```
/// use http::Method;
/// use tower_gateway::route::Route;
///
/// let orders = Route::prefix("/orders").methods([Method::GET, Method::POST]);
/// let tenant = Route::prefix("/").host("shop.example.com").name("shop");
/// let wildcard = Route::prefix("/api").host("*.example.com");
/// ```
#[derive(Clone)]
pub struct Route {
    prefix: String,
    exact: bool,
    host: Option<String>,
    methods: Vec<Method>,
    name: Option<String>,
    settings: Extensions,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("prefix", &self.prefix)
            .field("exact", &self.exact)
            .field("host", &self.host)
            .field("methods", &self.methods)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Requests whose normalized path is `prefix` or below it (`/orders`
    /// takes `/orders` and `/orders/7`, never `/ordersX`).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            exact: false,
            host: None,
            methods: Vec::new(),
            name: None,
            settings: Extensions::new(),
        }
    }

    /// Requests whose normalized path is exactly `path` (a trailing `/`
    /// aside): `/orders` takes `/orders` and `/orders/`, not `/orders/7`. An
    /// exact route wins over a prefix route of the same path.
    ///
    /// ```
    /// use http::Method;
    /// use tower_gateway::route::Route;
    ///
    /// let list = Route::exact("/orders").methods([Method::GET]);
    /// let items = Route::prefix("/orders").methods([Method::GET]).name("/orders/{id}");
    /// ```
    pub fn exact(path: impl Into<String>) -> Self {
        Self {
            exact: true,
            ..Self::prefix(path)
        }
    }

    /// Only requests for this host (the URI's authority, else `Host`; port
    /// ignored, case-insensitive). `*.example.com` takes one or more labels
    /// under `example.com`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into().to_ascii_lowercase());
        self
    }

    /// Only these methods (a route for `GET` also takes `HEAD`); a request
    /// whose path some route takes, but not with its method, gets 405 with
    /// `Allow`. Default: every method.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The route's name: its [`RouteTemplate`] in metrics and logs.
    /// Default: the prefix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Attaches a layer's setting to the route, replacing one of the same
    /// type. Layers offer typed methods for theirs (`Route::auth`,
    /// `Route::roles`, ...); this is how they, and layers of your own, store
    /// them.
    ///
    /// ```
    /// use tower_gateway::route::Route;
    ///
    /// #[derive(Clone, Debug, PartialEq)]
    /// struct Tenant(&'static str);
    ///
    /// let route = Route::prefix("/shop").with(Tenant("acme"));
    /// assert_eq!(route.setting::<Tenant>(), Some(&Tenant("acme")));
    /// ```
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, setting: T) -> Self {
        self.settings.insert(setting);
        self
    }

    /// A setting attached with [`Route::with`].
    pub fn setting<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.settings.get::<T>()
    }

    /// A setting to change in place, created with its default if absent
    /// (for settings that accumulate, such as several rate limits).
    pub fn setting_or_default<T: Clone + Default + Send + Sync + 'static>(&mut self) -> &mut T {
        self.settings.get_or_insert_default::<T>()
    }

    /// The normalized prefix (after [`Routes::builder`] built the table).
    pub fn prefix_str(&self) -> &str {
        &self.prefix
    }

    /// The methods the route takes; empty for every method.
    pub fn method_list(&self) -> &[Method] {
        &self.methods
    }
}

/// Why a [`Routes`] table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A prefix that no normalized request path can have.
    #[error("invalid route prefix {0:?}")]
    InvalidPrefix(String),
    /// Two routes take exactly the same requests, so one of them would
    /// never be matched.
    #[error("route {second:?} takes the same requests as route {first:?}")]
    Duplicate {
        /// The first route's template.
        first: String,
        /// The route that would never match.
        second: String,
    },
}

struct Entry {
    route: Route,
    template: RouteTemplate,
}

/// The route a request matched, in its extensions: one shared value (a
/// reference count) that every layer reads instead of matching again.
#[derive(Clone)]
pub struct MatchedRoute(Arc<Entry>);

impl MatchedRoute {
    /// The matched route.
    pub fn route(&self) -> &Route {
        &self.0.route
    }

    /// Its template, the label of metrics and logs.
    pub fn template(&self) -> &RouteTemplate {
        &self.0.template
    }

    /// One of its settings (see [`Route::with`]).
    pub fn setting<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.route.setting::<T>()
    }
}

impl fmt::Debug for MatchedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MatchedRoute")
            .field(&self.0.template.as_str())
            .finish()
    }
}

/// An ordered set of routes; the most specific match wins: a host route
/// over a host-less one, then the longest prefix.
pub struct Routes {
    entries: Vec<MatchedRoute>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.route()))
            .finish()
    }
}

/// Builds [`Routes`].
#[derive(Debug, Default)]
pub struct RoutesBuilder {
    routes: Vec<Route>,
}

impl RoutesBuilder {
    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Checks the routes and builds the table (no runtime needed).
    pub fn build(self) -> Result<Arc<Routes>, RouteError> {
        let mut entries: Vec<MatchedRoute> = Vec::with_capacity(self.routes.len());
        for mut route in self.routes {
            // Prefixes go through the request normalization, so a prefix
            // can never be spelled in a way no request matches.
            let normalized = path::normalize(&route.prefix)
                .map_err(|_| RouteError::InvalidPrefix(route.prefix.clone()))?;
            let prefix = normalized.as_str().trim_end_matches('/');
            route.prefix = if prefix.is_empty() {
                "/".into()
            } else {
                prefix.into()
            };
            route.methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            route.methods.dedup();
            let template =
                RouteTemplate::new(route.name.clone().unwrap_or_else(|| route.prefix.clone()));
            if let Some(first) = entries.iter().find(|e| {
                let other = e.route();
                other.prefix == route.prefix
                    && other.exact == route.exact
                    && other.host == route.host
                    && (other.methods.is_empty()
                        || other.methods.iter().any(|m| route.methods.contains(m))
                        || route.methods.is_empty())
            }) {
                return Err(RouteError::Duplicate {
                    first: first.template().as_str().to_owned(),
                    second: template.as_str().to_owned(),
                });
            }
            entries.push(MatchedRoute(Arc::new(Entry { route, template })));
        }
        Ok(Arc::new(Routes { entries }))
    }
}

/// Where a request landed in the table.
enum Landed {
    Route(usize),
    WrongMethod(HeaderValue),
    Nowhere,
}

impl Routes {
    /// Starts a table.
    pub fn builder() -> RoutesBuilder {
        RoutesBuilder::default()
    }

    /// The routes, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &MatchedRoute> {
        self.entries.iter()
    }

    /// The route of a request, matched once: the [`MatchedRoute`] already in
    /// its extensions, or the match made now (normalizing the path and
    /// recording the match). A request no route takes gets the refusal to
    /// answer it with: 404, 405 with `Allow`, or 400 for a path that cannot
    /// be normalized.
    pub fn resolve<B>(&self, request: &mut Request<B>) -> Result<MatchedRoute, Rejection> {
        if let Some(matched) = request.extensions().get::<MatchedRoute>() {
            return Ok(matched.clone());
        }
        let found = match path::normalize_cow(request.uri().path()) {
            Ok(std::borrow::Cow::Borrowed(same)) => self.find(request, same),
            Ok(std::borrow::Cow::Owned(changed)) => {
                let normalized = path::NormalizedPath::from_normalized(changed);
                path::rewrite_path(request.uri_mut(), &normalized);
                let found = self.find(request, normalized.as_str());
                request.extensions_mut().insert(normalized);
                found
            }
            Err(error) => return Err(path::path_rejection(error)),
        };
        match found {
            Landed::Route(index) => {
                let matched = self.entries[index].clone();
                request.extensions_mut().insert(matched.clone());
                Ok(matched)
            }
            Landed::WrongMethod(allow) => Err(Rejection::new(
                RejectionKind::MethodNotAllowed,
                "method_not_allowed",
                "method not allowed",
            )
            .with_header(header::ALLOW, allow)),
            Landed::Nowhere => Err(Rejection::new(
                RejectionKind::NotFound,
                "no_route",
                "no route",
            )),
        }
    }

    /// Matches a request whose path is already normalized.
    fn find<B>(&self, request: &Request<B>, path: &str) -> Landed {
        // Read only if some route names a host: most tables have none.
        let mut host: Option<Option<&str>> = None;
        let mut best: Option<(usize, (bool, usize, bool))> = None;
        let mut path_matched = false;
        for (index, entry) in self.entries.iter().enumerate() {
            let route = entry.route();
            if let Some(pattern) = &route.host
                && !host_matches(pattern, *host.get_or_insert_with(|| host_of(request)))
            {
                continue;
            }
            if !path_matches(route, path) {
                continue;
            }
            path_matched = true;
            if !route.methods.is_empty() && !method_allowed(&route.methods, request.method()) {
                continue;
            }
            let rank = (route.host.is_some(), route.prefix.len(), route.exact);
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((index, rank));
            }
        }
        match best {
            Some((index, _)) => Landed::Route(index),
            None if path_matched => Landed::WrongMethod(self.allow(request, path)),
            None => Landed::Nowhere,
        }
    }

    /// The `Allow` list of a path: the methods of every route that takes it
    /// (cold path, on a 405 only).
    fn allow<B>(&self, request: &Request<B>, path: &str) -> HeaderValue {
        let host = host_of(request);
        let mut allow: Vec<&str> = Vec::new();
        for entry in &self.entries {
            let route = entry.route();
            let host_ok = route
                .host
                .as_deref()
                .is_none_or(|pattern| host_matches(pattern, host));
            if host_ok && path_matches(route, path) {
                allow.extend(route.methods.iter().map(Method::as_str));
                if route.methods.contains(&Method::GET) {
                    allow.push("HEAD");
                }
            }
        }
        allow.sort_unstable();
        allow.dedup();
        HeaderValue::from_str(&allow.join(", ")).unwrap_or(HeaderValue::from_static(""))
    }
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

fn path_matches(route: &Route, path: &str) -> bool {
    if route.exact {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        path == route.prefix
    } else {
        prefix_matches(&route.prefix, path)
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
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

    #[test]
    fn exact_routes_take_only_their_path_and_win_over_prefixes() {
        let routes = Routes::builder()
            .route(Route::prefix("/orders").name("items"))
            .route(Route::exact("/orders").name("list"))
            .build()
            .unwrap();
        for (path, name) in [
            ("/orders", "list"),
            ("/orders/", "list"),
            ("/orders/7", "items"),
        ] {
            let mut request = Request::get(path).body(()).unwrap();
            assert_eq!(
                routes.resolve(&mut request).unwrap().template().as_str(),
                name,
                "{path}"
            );
        }
        let root = Routes::builder().route(Route::exact("/")).build().unwrap();
        assert!(
            root.resolve(&mut Request::get("/").body(()).unwrap())
                .is_ok()
        );
        assert!(
            root.resolve(&mut Request::get("/x").body(()).unwrap())
                .is_err()
        );
    }

    #[test]
    fn duplicate_routes_are_refused() {
        let error = Routes::builder()
            .route(Route::prefix("/orders").methods([Method::GET]))
            .route(Route::prefix("/orders/").methods([Method::GET, Method::POST]))
            .build()
            .unwrap_err();
        assert!(matches!(error, RouteError::Duplicate { .. }), "{error}");
        Routes::builder()
            .route(Route::prefix("/orders").methods([Method::GET]))
            .route(Route::prefix("/orders").methods([Method::POST]))
            .build()
            .unwrap();
    }

    #[test]
    fn most_specific_route_wins_and_405_lists_every_method() {
        let routes = Routes::builder()
            .route(Route::prefix("/").name("root"))
            .route(Route::prefix("/orders").methods([Method::GET]))
            .route(
                Route::prefix("/orders")
                    .methods([Method::POST])
                    .name("create"),
            )
            .route(Route::prefix("/pay").methods([Method::POST]))
            .build()
            .unwrap();
        let mut get = Request::get("/orders/7").body(()).unwrap();
        assert_eq!(
            routes.resolve(&mut get).unwrap().template().as_str(),
            "/orders"
        );
        let mut post = Request::post("/orders").body(()).unwrap();
        assert_eq!(
            routes.resolve(&mut post).unwrap().template().as_str(),
            "create"
        );
        let mut delete = Request::delete("/orders").body(()).unwrap();
        // The root route takes every method.
        assert_eq!(
            routes.resolve(&mut delete).unwrap().template().as_str(),
            "root"
        );
        let routes = Routes::builder()
            .route(Route::prefix("/orders").methods([Method::GET]))
            .route(Route::prefix("/orders").methods([Method::POST]))
            .build()
            .unwrap();
        let mut delete = Request::delete("/orders").body(()).unwrap();
        let refusal = routes.resolve(&mut delete).unwrap_err();
        assert_eq!(refusal.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refusal.headers()[header::ALLOW], "GET, HEAD, POST");
        let mut dotted = Request::get("/x/%2e%2e/orders").body(()).unwrap();
        assert!(routes.resolve(&mut dotted).is_ok());
        assert_eq!(dotted.uri().path(), "/orders");
        let mut bad = Request::get("/orders%2f7").body(()).unwrap();
        assert_eq!(
            routes.resolve(&mut bad).unwrap_err().status(),
            http::StatusCode::BAD_REQUEST
        );
    }
}
