//! What a route says about roles.

use std::sync::{Arc, LazyLock};

use http::Method;

use super::{Policy, Requirement, Rule};
use crate::{path::NormalizedPath, route::Route};

/// The role rules of a route, compiled into a policy whose rules cover
/// every path: the route already matched the path, so only the method is
/// left to decide on.
#[derive(Debug, Clone)]
pub(crate) struct RouteRoles {
    rules: Vec<Rule>,
    pub(crate) policy: Arc<Policy>,
    #[cfg(feature = "metrics")]
    pub(crate) denials: Arc<std::sync::OnceLock<super::metrics::RuleDenials>>,
}

impl Default for RouteRoles {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            policy: Arc::new(Policy::for_route(&[])),
            #[cfg(feature = "metrics")]
            denials: Arc::default(),
        }
    }
}

/// The path a route policy is evaluated on: its rules match every path.
pub(crate) static ANY_PATH: LazyLock<NormalizedPath> =
    LazyLock::new(|| NormalizedPath::from_normalized("/".to_owned()));

/// RBAC's settings of a route.
impl Route {
    /// Requires at least one of `roles` (after the
    /// [`RbacLayer`](super::RbacLayer)'s role hierarchy) for `methods` of
    /// this route; no methods means every method. Shorthand for
    /// [`Route::allow`] with [`Requirement::AnyOf`].
    ///
    /// Once a route has role rules, a method none of them names is refused
    /// (401 without an identity, 403 with one). A `GET` rule covers `HEAD`.
    ///
    /// ```
    /// use http::Method;
    /// use tower_gateway::route::Route;
    ///
    /// let orders = Route::prefix("/orders")
    ///     .roles([Method::GET], ["admin"])
    ///     .roles([Method::POST], ["user"]);
    /// ```
    pub fn roles<M, R, S>(self, methods: M, roles: R) -> Self
    where
        M: IntoIterator<Item = Method>,
        R: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let roles = roles.into_iter().map(Into::into).collect();
        self.allow(methods, Requirement::AnyOf(roles))
    }

    /// Who may call `methods` of this route (no methods: every method):
    /// anyone ([`Requirement::Public`]), any verified caller, or callers
    /// with certain roles. Rules are checked in the order given; the first
    /// whose methods match decides. An empty role set refuses everyone.
    ///
    /// ```
    /// use http::Method;
    /// use tower_gateway::rbac::Requirement;
    /// use tower_gateway::route::Route;
    ///
    /// let payments = Route::prefix("/payments").allow([], Requirement::Authenticated);
    /// let health = Route::prefix("/health").allow([Method::GET], Requirement::Public);
    /// ```
    pub fn allow(mut self, methods: impl IntoIterator<Item = Method>, who: Requirement) -> Self {
        let methods: Vec<Method> = methods.into_iter().collect();
        let label = format!(
            "{} {}",
            if methods.is_empty() {
                "*".to_owned()
            } else {
                methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            self.prefix_str()
        );
        let rule = Rule::new("/").methods(methods).name(label).requirement(who);
        let roles = self.setting_or_default::<RouteRoles>();
        roles.rules.push(rule);
        roles.policy = Arc::new(Policy::for_route(&roles.rules));
        #[cfg(feature = "metrics")]
        {
            roles.denials = Arc::default();
        }
        self
    }
}
