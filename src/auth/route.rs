//! What a route says about authentication.

use crate::route::Route;

/// How a route authenticates its requests (see [`Route::auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMode {
    /// A valid token is required: a missing one is 401, an invalid one 401
    /// with `error="invalid_token"` (the default).
    #[default]
    Required,
    /// A valid token identifies the caller; a missing one makes the request
    /// anonymous; an invalid one is still refused with 401 — a caller that
    /// presents credentials gets them checked.
    Optional,
    /// No authentication: the token is not looked at, and the request
    /// carries no identity (identity headers a client sent are still
    /// removed).
    None,
}

/// Authentication's setting of a route.
impl Route {
    /// How [`JwtAuthLayer`](super::JwtAuthLayer) treats the route's
    /// requests, instead of the layer's own
    /// [`allow_anonymous`](super::JwtAuthBuilder::allow_anonymous) setting.
    ///
    /// ```
    /// use tower_gateway::auth::AuthMode;
    /// use tower_gateway::route::Route;
    ///
    /// let public = Route::prefix("/public").auth(AuthMode::None);
    /// let catalog = Route::prefix("/catalog").auth(AuthMode::Optional);
    /// ```
    pub fn auth(self, mode: AuthMode) -> Self {
        self.with(mode)
    }
}
