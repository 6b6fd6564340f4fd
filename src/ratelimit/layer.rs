//! The layer and its builder.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{
    Decision,
    headers::{HeaderList, PreparedHeaders, QuotaHeaders},
    key::{KeyBuilder, KeyExtractor},
    limit::{Limit, LimitError},
    local::{DEFAULT_MAX_KEYS, LocalLimiter},
    metrics::{RateLimitMetrics, RateLimitOutcome},
    service::RateLimit,
};
use crate::{
    identity::Identity,
    reject::{Rejection, RejectionKind, RequestHead},
    route::RouteTemplate,
};

/// What the layer does when the backend cannot decide (Redis failed, timed
/// out, or is considered down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through unlimited (Kong's `fault_tolerant`).
    Allow,
    /// Refuse it with 503 and `Retry-After: 1` (gRPC `UNAVAILABLE`).
    Deny,
    /// Decide it with the local limiter, on
    /// [`fallback_share`](RateLimitLayerBuilder::fallback_share) of the
    /// limit (the default).
    #[default]
    Local,
}

/// What the layer does with a request it cannot build a key for (no
/// verified identity for [`Consumer`](super::Consumer), no header for
/// [`Header`](super::Header), a key that would exceed
/// [`MAX_KEY_LEN`](super::key::MAX_KEY_LEN) even with long values hashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it with 400 (the default: an unkeyed request would escape
    /// the limit). Use [`KeyExtractor::or`] to fall back to another key.
    #[default]
    Reject,
    /// Let it through without limiting it.
    Allow,
}

/// Why a [`RateLimitLayer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// No [`RateLimitLayerBuilder::key`] was given.
    #[error("no key extractor configured")]
    NoKey,
    /// Neither a default limit nor a tier was given.
    #[error("no limit configured")]
    NoLimit,
    /// A limit cannot be enforced.
    #[error("limit of tier {tier:?}: {error}")]
    Limit {
        /// The tier's role, or `default`.
        tier: String,
        /// What is wrong.
        error: LimitError,
    },
    /// The fallback share is not in (0, 1].
    #[error("the fallback share must be in (0, 1]")]
    InvalidShare,
    /// The scope is too long to be part of a key.
    #[error("the scope is too long")]
    InvalidScope,
}

/// Rate limiting by key, locally or shared through Redis (see the
/// [module documentation](super)).
///
/// Cheap to clone (one `Arc`); every service it wraps shares its state.
#[derive(Clone)]
pub struct RateLimitLayer {
    pub(crate) shared: Arc<Shared>,
}

/// The layer under the name of its distributed use: a [`RateLimitLayer`]
/// built with [`RateLimitLayerBuilder::redis`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub type RedisRateLimitLayer = RateLimitLayer;

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("scope", &self.shared.scope)
            .field("backend", &self.shared.backend)
            .field("on_backend_error", &self.shared.failure)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a layer: set a [key](RateLimitLayerBuilder::key) and a
    /// [limit](RateLimitLayerBuilder::limit) at least.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            key: None,
            default: None,
            tiers: Vec::new(),
            scope: "default".to_owned(),
            headers: QuotaHeaders::default(),
            missing: MissingKey::default(),
            metrics: None,
            max_local_keys: DEFAULT_MAX_KEYS,
            #[cfg(feature = "redis")]
            redis: None,
            failure: FailurePolicy::default(),
            share: 1.0,
        }
    }
}

impl RateLimitLayer {
    /// The name of this layer's state ([`RateLimitLayerBuilder::scope`]).
    pub fn scope(&self) -> &str {
        &self.shared.scope
    }

    /// What this layer would do with `request`, without counting it: which
    /// tier applies to the caller (by the roles of the
    /// [`Identity`] in its extensions, exactly as named — tiers apply no
    /// role hierarchy), and the key it would be counted against.
    ///
    /// For tools that explain a configuration (an authorization matrix, a
    /// dry run) from the very layer that enforces it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use http::Request;
    /// use tower_gateway::ratelimit::{Consumer, Limit, LimitPlan, MissingKey, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .key(Consumer::subject())
    ///     .limit(Limit::new().per_second(5))
    ///     .build()?;
    /// // No identity, so no consumer to count against: refused with 400.
    /// let anonymous = Request::get("/orders").body(())?;
    /// assert_eq!(layer.plan(&anonymous), LimitPlan::NoKey(MissingKey::Reject));
    /// # Ok(()) }
    /// ```
    pub fn plan<B>(&self, request: &http::Request<B>) -> LimitPlan<'_> {
        let shared = &*self.shared;
        let Some(index) = shared.select(request.extensions().get::<Identity>()) else {
            return LimitPlan::Unlimited;
        };
        let tier = shared.tier(index);
        let mut key = KeyBuilder::from_prefix(&tier.tag);
        if shared
            .key
            .extract(&super::RequestInfo::of(request), &mut key)
            .is_err()
        {
            return LimitPlan::NoKey(shared.missing);
        }
        LimitPlan::Counted {
            role: tier.role.as_deref(),
            limit: &tier.limit,
            key: key.into_string(),
        }
    }
}

/// What a [`RateLimitLayer`] would do with a request
/// ([`RateLimitLayer::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitPlan<'a> {
    /// No tier applies to the caller, and there is no default limit: the
    /// request is not limited.
    Unlimited,
    /// The key extractor finds nothing to count the request against; the
    /// [`MissingKey`] setting says what happens to it.
    NoKey(MissingKey),
    /// The request is counted against `key` under `limit`.
    Counted {
        /// The role of the tier that applies; `None` for the default limit.
        role: Option<&'a str>,
        /// The limit of that tier.
        limit: &'a Limit,
        /// The key, scope and tier included.
        key: String,
    },
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

/// Configures a [`RateLimitLayer`].
#[must_use]
pub struct RateLimitLayerBuilder {
    key: Option<Arc<dyn KeyExtractor>>,
    default: Option<Limit>,
    tiers: Vec<(String, Limit)>,
    scope: String,
    headers: QuotaHeaders,
    missing: MissingKey,
    metrics: Option<RateLimitMetrics>,
    max_local_keys: usize,
    #[cfg(feature = "redis")]
    redis: Option<super::RedisBackend>,
    failure: FailurePolicy,
    share: f64,
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("default", &self.default)
            .field("tiers", &self.tiers)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Who a request is counted against (required).
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// The limit of callers no [tier](Self::tier) applies to. Without one,
    /// only callers in a tier are limited.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.default = Some(limit);
        self
    }

    /// The limit of callers with `role` (in the verified
    /// [`Identity`]). Tiers are tried in the order they are added; the
    /// first whose role the caller has applies. Each tier keeps its own
    /// state, so moving a caller to another tier starts it afresh.
    pub fn tier(mut self, role: impl Into<String>, limit: Limit) -> Self {
        self.tiers.push((role.into(), limit));
        self
    }

    /// Names this layer's state (default `default`). Layers with the same
    /// scope, key and window share quota — across gateways, through Redis;
    /// give each a scope of its own to count separately.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Which quota headers responses carry (default: the IETF fields).
    pub fn headers(mut self, headers: QuotaHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// What to do with requests without a key (default: 400).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// Counts every decision in `metrics` (by [`RateLimitOutcome`]).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: RateLimitMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// At most about this many keys in the local limiter (default
    /// [`DEFAULT_MAX_KEYS`]).
    pub fn max_local_keys(mut self, max: usize) -> Self {
        self.max_local_keys = max;
        self
    }

    /// Keeps the state in Redis, shared by every gateway using it.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, backend: super::RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// What to do when Redis cannot decide (default
    /// [`FailurePolicy::Local`]).
    pub fn on_backend_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// The share of each limit the local fallback enforces while Redis is
    /// down (default 1.0): with N gateways, `1.0 / N` keeps the total near
    /// the limit.
    pub fn fallback_share(mut self, share: f64) -> Self {
        self.share = share;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, RateLimitError> {
        let key = self.key.ok_or(RateLimitError::NoKey)?;
        if self.default.is_none() && self.tiers.is_empty() {
            return Err(RateLimitError::NoLimit);
        }
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(RateLimitError::InvalidShare);
        }
        let mut scope_key = KeyBuilder::new();
        scope_key
            .push("s", self.scope.as_bytes())
            .map_err(|_| RateLimitError::InvalidScope)?;
        let compile = |role: Option<String>, limit: Limit| {
            limit.validate().map_err(|error| RateLimitError::Limit {
                tier: role.clone().unwrap_or_else(|| "default".to_owned()),
                error,
            })?;
            let mut tag = scope_key.clone();
            tag.push("t", role.as_deref().unwrap_or("").as_bytes())
                .map_err(|_| RateLimitError::InvalidScope)?;
            let fallback = limit.scaled(self.share);
            Ok(Tier {
                headers: PreparedHeaders::new(&limit, self.headers),
                fallback_headers: PreparedHeaders::new(&fallback, self.headers),
                role: role.map(Arc::from),
                tag: tag.into_string(),
                limit,
                fallback,
            })
        };
        // Role tiers in order, then the default (the only one without a role).
        let tiers = self
            .tiers
            .into_iter()
            .map(|(role, limit)| compile(Some(role), limit))
            .chain(self.default.map(|limit| compile(None, limit)))
            .collect::<Result<Vec<_>, _>>()?;

        let local = LocalLimiter::with_max_keys(self.max_local_keys);
        #[cfg(feature = "redis")]
        let (backend, fallback) = match self.redis {
            Some(redis) => (
                Backend::Redis(redis),
                (self.failure == FailurePolicy::Local).then_some(local),
            ),
            None => (Backend::Local(local), None),
        };
        #[cfg(not(feature = "redis"))]
        let (backend, fallback) = (Backend::Local(local), None);

        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key,
                tiers,
                scope: self.scope,
                missing: self.missing,
                metrics: self.metrics,
                backend,
                fallback,
                failure: self.failure,
            }),
        })
    }
}

/// Everything the services of one layer share.
pub(crate) struct Shared {
    pub(crate) key: Arc<dyn KeyExtractor>,
    /// Role tiers in order, then the default tier if there is one.
    tiers: Vec<Tier>,
    scope: String,
    pub(crate) missing: MissingKey,
    metrics: Option<RateLimitMetrics>,
    pub(crate) backend: Backend,
    fallback: Option<LocalLimiter>,
    failure: FailurePolicy,
}

/// One limit as the layer uses it.
pub(crate) struct Tier {
    role: Option<Arc<str>>,
    /// The key prefix of this layer and tier (`s=<scope>;t=<role>;`).
    pub(crate) tag: String,
    pub(crate) limit: Limit,
    fallback: Limit,
    headers: PreparedHeaders,
    fallback_headers: PreparedHeaders,
}

/// Where decisions are made.
pub(crate) enum Backend {
    Local(LocalLimiter),
    #[cfg(feature = "redis")]
    Redis(super::RedisBackend),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(local) => local.fmt(f),
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.fmt(f),
        }
    }
}

/// How a decision ends for the request.
pub(crate) enum Settled<B> {
    /// Call the inner service; add these headers to its response.
    Admit(HeaderList),
    /// Answer with this response.
    Refuse(http::Response<B>),
}

impl Shared {
    /// The tier that applies to the caller: the first whose role it has,
    /// else the default; `None` if it is not limited.
    pub(crate) fn select(&self, identity: Option<&Identity>) -> Option<usize> {
        self.tiers.iter().position(|t| match t.role.as_deref() {
            Some(role) => identity.is_some_and(|id| id.has_role(role)),
            None => true,
        })
    }

    /// The tier at an index [`select`](Self::select) returned.
    pub(crate) fn tier(&self, index: usize) -> &Tier {
        &self.tiers[index]
    }

    /// Turns the backend's answer (`None`: it failed) into what happens to
    /// the request, applying the failure policy and reporting the outcome.
    pub(crate) fn settle<B: Default>(
        &self,
        tier: usize,
        key: &str,
        decided: Option<Decision>,
        route: Option<&RouteTemplate>,
        head: &RequestHead<'_>,
    ) -> Settled<B> {
        let tier = self.tier(tier);
        let (decision, headers, outcome, limit) = match decided {
            Some(d) => {
                let outcome = if d.allowed {
                    RateLimitOutcome::Allowed
                } else {
                    RateLimitOutcome::Limited
                };
                (d, &tier.headers, outcome, &tier.limit)
            }
            None => match (self.failure, &self.fallback) {
                (FailurePolicy::Local, Some(fallback)) => (
                    fallback.check(key, &tier.fallback),
                    &tier.fallback_headers,
                    RateLimitOutcome::Fallback,
                    &tier.fallback,
                ),
                (FailurePolicy::Deny, _) => {
                    record_decision("failed_closed", None, false);
                    self.report(route, RateLimitOutcome::BackendError);
                    let rejection = Rejection::unavailable(
                        "ratelimit_unavailable",
                        "rate limiting is unavailable",
                        Some(1),
                    );
                    return Settled::Refuse(rejection.into_response(head));
                }
                _ => {
                    record_decision("failed_open", None, false);
                    self.report(route, RateLimitOutcome::BackendError);
                    return Settled::Admit(Vec::new());
                }
            },
        };
        record_decision(
            if decision.allowed {
                "allowed"
            } else {
                "limited"
            },
            deciding_window(&decision, limit),
            outcome == RateLimitOutcome::Fallback,
        );
        self.report(route, outcome);
        let mut list = Vec::new();
        if decision.allowed {
            headers.render(&decision, &mut list);
            return Settled::Admit(list);
        }
        headers.render_refusal(&decision, &mut list);
        let rejection = list.into_iter().fold(
            Rejection::new(
                RejectionKind::TooManyRequests,
                "rate_limited",
                "rate limit exceeded",
            ),
            |rejection, (name, value)| rejection.with_header(name, value),
        );
        Settled::Refuse(rejection.into_response(head))
    }

    /// Counts a decision, if metrics are attached.
    pub(crate) fn report(&self, route: Option<&RouteTemplate>, outcome: RateLimitOutcome) {
        if let Some(metrics) = &self.metrics {
            metrics.decision(route, outcome);
        }
    }

    /// The response to a request without a key.
    pub(crate) fn missing_key<B: Default>(&self, head: &RequestHead<'_>) -> http::Response<B> {
        let rejection = Rejection::bad_request(
            "ratelimit_key_missing",
            "the request carries nothing to rate-limit it by",
        );
        rejection.into_response(head)
    }
}

/// Records a decision on the request's span (see [`crate::trace`]); a
/// no-op on a span without the fields.
fn record_decision(decision: &'static str, window: Option<&str>, fallback: bool) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("gateway.ratelimit.decision", decision);
    span.record("gateway.ratelimit.window", window);
    span.record("gateway.ratelimit.fallback", fallback);
}

/// The name of the window that decided: the first that refused, or the one
/// with the least quota left.
fn deciding_window<'a>(decision: &Decision, limit: &'a Limit) -> Option<&'a str> {
    let states = decision.windows();
    let index = match decision.allowed {
        false => states.iter().position(|w| w.remaining == 0),
        true => states
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.remaining)
            .map(|(i, _)| i),
    }?;
    limit.windows().get(index).map(|w| w.name())
}
