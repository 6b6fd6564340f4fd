use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    metrics::RuleDenials,
    policy::{Decision, Matched, Policy, RoleHierarchy, Rule},
    route::{ANY_PATH, RouteRoles},
};
use crate::{
    identity::{Identity, RoleSource},
    path,
    reject::{Rejection, RequestHead, ResponseFuture},
    route::MatchedRoute,
};

/// Authorizes requests by role with a [`Policy`] (see the [module
/// documentation](super)).
#[derive(Debug, Clone)]
pub struct RbacLayer {
    shared: Arc<Shared>,
}

#[derive(Debug, Clone)]
struct Shared {
    policy: Arc<Policy>,
    hierarchy: RoleHierarchy,
    role_source: Option<RoleSource>,
    shadow: bool,
    realm: Option<String>,
    metrics: Option<RuleDenials>,
    #[cfg(feature = "metrics")]
    handle: Option<super::RbacMetrics>,
}

impl Shared {
    /// `policy`'s decision for `request` on `path`, with the roles of the
    /// request's [`Identity`] (read through the layer's role source, if
    /// any).
    fn evaluate<B>(
        &self,
        policy: &Policy,
        request: &Request<B>,
        path: &path::NormalizedPath,
    ) -> (Decision, Matched) {
        let identity = request.extensions().get::<Identity>();
        let extracted;
        let roles = match (identity, &self.role_source) {
            (None, _) => None,
            (Some(identity), None) => Some(identity.roles()),
            (Some(identity), Some(source)) => {
                extracted = source.extract(identity.claims());
                Some(extracted.as_slice())
            }
        };
        policy.evaluate(request.method(), path, roles, &self.hierarchy)
    }
}

/// A layer with no policy of its own: it enforces only the role rules of
/// matched routes ([`Route::roles`](crate::route::Route::roles)) and lets
/// every other request through.
impl Default for RbacLayer {
    fn default() -> Self {
        Self::new(Policy::empty())
    }
}

impl RbacLayer {
    /// Enforces `policy` — and, on requests a
    /// [`RouteLayer`](crate::route::RouteLayer) matched to a route with
    /// role rules ([`Route::roles`](crate::route::Route::roles)), the
    /// route's rules instead. For a gateway whose rules all live on its
    /// routes, use [`RbacLayer::default`].
    pub fn new(policy: impl Into<Arc<Policy>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy: policy.into(),
                hierarchy: RoleHierarchy::new(),
                role_source: None,
                shadow: false,
                realm: None,
                metrics: None,
                #[cfg(feature = "metrics")]
                handle: None,
            }),
        }
    }

    /// Requires at least one of `roles` on every request (for one route).
    pub fn require_any<I, S>(roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::single(Rule::new("/").any_of(roles))
    }

    /// Requires every one of `roles` on every request (for one route).
    pub fn require_all<I, S>(roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::single(Rule::new("/").all_of(roles))
    }

    /// Requires a verified identity, whatever its roles.
    pub fn require_authenticated() -> Self {
        Self::single(Rule::new("/").authenticated())
    }

    fn single(rule: Rule) -> Self {
        Self::new(Policy::single(rule))
    }

    /// Applies a role hierarchy (e.g. `admin` implies `user`).
    pub fn hierarchy(mut self, hierarchy: RoleHierarchy) -> Self {
        Arc::make_mut(&mut self.shared).hierarchy = hierarchy;
        self
    }

    /// Reads roles from these claims of the identity instead of
    /// [`Identity::roles`] (which the authenticating layer filled).
    pub fn role_source(mut self, source: RoleSource) -> Self {
        Arc::make_mut(&mut self.shared).role_source = Some(source);
        self
    }

    /// Shadow (dry-run) mode: evaluate, log and count would-be denials, but
    /// let every request through. Paths that cannot be normalized are still
    /// refused with 400: passing them on would defeat the policy later.
    pub fn shadow(mut self, shadow: bool) -> Self {
        Arc::make_mut(&mut self.shared).shadow = shadow;
        self
    }

    /// The `realm` of the `WWW-Authenticate` challenge on 401.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.shared).realm = Some(realm.into());
        self
    }

    /// Counts denials (per rule, enforce or shadow) in `metrics`.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: super::RbacMetrics) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        shared.metrics = Some(metrics.rules(&shared.policy));
        shared.handle = Some(metrics);
        self
    }

    /// The policy, for reading its counters.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.shared.policy
    }

    /// What the layer decides for `request`, without counting, logging or
    /// rewriting anything: the rules of its matched route
    /// ([`Route::roles`](crate::route::Route::roles)) if it has any, else the
    /// layer's policy on the normalized path; the caller's roles from the
    /// [`Identity`] in its extensions (none: anonymous), through the role
    /// source and the hierarchy. In [shadow](Self::shadow) mode the layer
    /// lets the request pass whatever this says.
    ///
    /// For tools that explain a policy (an authorization matrix, a dry
    /// run of a new configuration) from the very layer that enforces it.
    ///
    /// ```
    /// use http::{Method, Request};
    /// use tower_gateway::identity::{Identity, RoleSource};
    /// use tower_gateway::rbac::{Decision, RbacLayer, RoleHierarchy};
    /// use tower_gateway::route::{Route, Routes};
    ///
    /// let routes = Routes::builder()
    ///     .route(Route::prefix("/orders").roles([Method::GET], ["user"]))
    ///     .build()?;
    /// let rbac = RbacLayer::default().hierarchy(RoleHierarchy::new().inherit("admin", ["user"]));
    /// let orders = routes.iter().next().cloned().expect("one route");
    /// let request = |method: Method, roles: Option<&str>| {
    ///     let mut request = Request::builder().method(method).uri("/orders").body(()).unwrap();
    ///     request.extensions_mut().insert(orders.clone());
    ///     if let Some(role) = roles {
    ///         let claims = serde_json::json!({ "sub": "ann", "roles": [role] });
    ///         let claims = claims.as_object().cloned().unwrap_or_default();
    ///         request.extensions_mut().insert(Identity::from_claims(claims, &RoleSource::default()));
    ///     }
    ///     request
    /// };
    /// assert_eq!(rbac.decide(&request(Method::GET, None))?, Decision::Unauthenticated);
    /// assert_eq!(rbac.decide(&request(Method::GET, Some("admin")))?, Decision::Allow);
    /// // Methods no rule names are refused.
    /// assert_eq!(rbac.decide(&request(Method::DELETE, Some("admin")))?, Decision::Forbidden);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn decide<B>(&self, request: &Request<B>) -> Result<Decision, path::PathError> {
        let shared = &*self.shared;
        let route_roles = request
            .extensions()
            .get::<MatchedRoute>()
            .and_then(|route| route.setting::<RouteRoles>());
        let normalized = match route_roles {
            Some(_) => ANY_PATH.clone(),
            None => path::normalize(request.uri().path())?,
        };
        let policy = route_roles.map_or(&*shared.policy, |r| &*r.policy);
        Ok(shared.evaluate(policy, request, &normalized).0)
    }
}

impl<S> Layer<S> for RbacLayer {
    type Service = Rbac<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rbac {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RbacLayer`].
#[derive(Debug, Clone)]
pub struct Rbac<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Rbac<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        // The matched route's rules, if it has any; else the layer's policy,
        // which decides on the normalized path.
        let route = request
            .extensions()
            .get::<MatchedRoute>()
            .filter(|route| route.setting::<RouteRoles>().is_some())
            .cloned();
        let route_roles = route.as_ref().and_then(|r| r.setting::<RouteRoles>());
        let normalized = match route_roles {
            Some(_) => ANY_PATH.clone(),
            None => match path::apply(&mut request) {
                Ok(normalized) => normalized,
                Err(error) => {
                    let rejection = path::path_rejection(error);
                    return ResponseFuture::rejected(
                        rejection.into_response(&RequestHead::of(&request)),
                    );
                }
            },
        };
        let policy = route_roles.map_or(&*shared.policy, |r| &*r.policy);
        let (decision, matched) = shared.evaluate(policy, &request, &normalized);
        let span = tracing::Span::current();
        if decision == Decision::Allow {
            if !span.is_disabled() {
                span.record("gateway.rbac.rule", policy.label(matched));
                span.record("gateway.rbac.outcome", "allowed");
            }
            return ResponseFuture::inner(self.inner.call(request));
        }
        policy.count_denial(matched);
        let rule = policy.label(matched);
        span.record("gateway.rbac.rule", rule);
        span.record(
            "gateway.rbac.outcome",
            if shared.shadow {
                "shadow_denied"
            } else {
                "denied"
            },
        );
        match route_roles {
            #[cfg(feature = "metrics")]
            Some(route_roles) => {
                if let Some(handle) = &shared.handle {
                    route_roles
                        .denials
                        .get_or_init(|| handle.rules(&route_roles.policy))
                        .denied(matched, shared.shadow);
                }
            }
            _ => {
                if let Some(metrics) = &shared.metrics {
                    metrics.denied(matched, shared.shadow);
                }
            }
        }
        let subject = request
            .extensions()
            .get::<Identity>()
            .and_then(Identity::subject)
            .unwrap_or("-");
        let path = request.uri().path();
        if shared.shadow {
            tracing::warn!(
                target: "tower_gateway::rbac",
                rule, ?decision, method = %request.method(), path, subject,
                "shadow policy would deny"
            );
            return ResponseFuture::inner(self.inner.call(request));
        }
        tracing::debug!(
            target: "tower_gateway::rbac",
            rule, ?decision, method = %request.method(), path, subject,
            "denied"
        );
        let rejection = match decision {
            Decision::Unauthenticated => {
                Rejection::unauthenticated(shared.realm.as_deref(), None, "authentication required")
            }
            _ => Rejection::forbidden("insufficient role"),
        };
        ResponseFuture::rejected(rejection.into_response(&RequestHead::of(&request)))
    }
}
