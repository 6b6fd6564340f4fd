use std::{fmt, sync::Arc, time::Duration};

use http::{Extensions, HeaderName};
use tower_layer::Layer;

use super::{
    AuthError, FailureBudget, Issuer, JwtAuth,
    budget::FailureLedger,
    metrics::AuthMetrics,
    token::TokenSources,
    verifier::{Settings, Verifier},
};
use crate::identity::{ClaimPath, Identity, RoleSource};

/// Validates bearer JWTs and puts the verified [`Identity`] into the request
/// extensions (see the [module documentation](super)).
///
/// Cheap to clone: all state is behind one `Arc`.
#[derive(Clone)]
pub struct JwtAuthLayer {
    pub(crate) shared: Arc<Shared>,
}

type ClaimsInserter = Arc<dyn Fn(&Identity, &mut Extensions) -> bool + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) verifier: Verifier,
    pub(crate) sources: TokenSources,
    pub(crate) allow_anonymous: bool,
    pub(crate) preflight_passthrough: bool,
    pub(crate) forward_subject: Option<HeaderName>,
    pub(crate) forward_roles: Option<HeaderName>,
    pub(crate) stripped: Vec<HeaderName>,
    pub(crate) claims_inserter: Option<ClaimsInserter>,
    pub(crate) realm: Option<String>,
    pub(crate) metrics: Option<AuthMetrics>,
    pub(crate) budget: Option<FailureLedger>,
}

impl fmt::Debug for JwtAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer").finish_non_exhaustive()
    }
}

/// An invalid [`JwtAuthLayer`] configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// No issuer was configured.
    #[error("at least one issuer is required")]
    NoIssuer,
    /// An issuer has neither static keys nor a JWKS.
    #[error("issuer {0:?} has no keys and no JWKS")]
    NoKeys(String),
    /// Two issuers share the same `iss` (or two are `Issuer::any()`).
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// jsonwebtoken's process-wide crypto provider does not work: with both
    /// of its backends compiled in (feature `aws-lc`), something used
    /// jsonwebtoken before this crate could install one. Call
    /// [`install_crypto_backend`](super::install_crypto_backend) first
    /// thing in `main`.
    #[error(
        "jsonwebtoken has no working crypto provider; call install_crypto_backend() at start-up"
    )]
    CryptoProvider,
    /// The HTTP client for JWKS could not be built.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    #[error(transparent)]
    HttpClient(#[from] crate::client::HttpClientError),
}

/// Builds a [`JwtAuthLayer`].
pub struct JwtAuthBuilder {
    issuers: Vec<Issuer>,
    settings: Settings,
    sources: TokenSources,
    allow_anonymous: bool,
    preflight_passthrough: bool,
    forward_subject: Option<HeaderName>,
    forward_roles: Option<HeaderName>,
    stripped: Vec<HeaderName>,
    claims_inserter: Option<ClaimsInserter>,
    realm: Option<String>,
    metrics: Option<AuthMetrics>,
    budget: Option<FailureBudget>,
    #[cfg(feature = "jwks")]
    jwks_options: super::JwksOptions,
    #[cfg(feature = "jwks")]
    http: super::HttpClientConfig,
}

impl fmt::Debug for JwtAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthBuilder")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

impl JwtAuthLayer {
    /// Starts a configuration (and installs this crate's signature backend,
    /// see [`install_crypto_backend`](super::install_crypto_backend)).
    pub fn builder() -> JwtAuthBuilder {
        super::install_crypto_backend();
        JwtAuthBuilder {
            issuers: Vec::new(),
            settings: Settings {
                leeway: Duration::from_secs(30),
                require_exp: true,
                max_lifetime: None,
                required_claims: Vec::new(),
                role_source: RoleSource::default(),
                cache_capacity: 4096,
                rejected_capacity: 4096,
                rejected_ttl: Duration::from_secs(5),
                max_token_len: 8 * 1024,
            },
            sources: TokenSources::default(),
            allow_anonymous: false,
            preflight_passthrough: false,
            forward_subject: None,
            forward_roles: None,
            stripped: Vec::new(),
            claims_inserter: None,
            realm: None,
            metrics: None,
            budget: None,
            #[cfg(feature = "jwks")]
            jwks_options: super::JwksOptions::default(),
            #[cfg(feature = "jwks")]
            http: super::HttpClientConfig::default(),
        }
    }

    /// Verifies a token outside a request (for tests, WebSocket handshakes,
    /// or your own transports). Does not wait for JWKS refreshes.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.shared.verifier.verify(token).map_err(|f| f.error)
    }

    /// Waits until every issuer can verify — every JWKS fetched at least
    /// once, even for an issuer that also has static keys — or `timeout`
    /// passes. Returns whether keys are present — call it at
    /// start-up to hold traffic until the gateway can verify tokens.
    pub async fn wait_for_keys(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.verifier.has_keys() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// JWKS fetches attempted and failed, summed over issuers.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn jwks_fetch_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.shared.verifier.refreshers().fold((0, 0), |(f, e), r| {
            (
                f + r.counters.fetches.load(Ordering::Relaxed),
                e + r.counters.failures.load(Ordering::Relaxed),
            )
        })
    }
}

impl JwtAuthBuilder {
    /// Adds an issuer. Several issuers, each with its own keys, may share
    /// one layer; a token is matched to its issuer by `iss`.
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.settings.leeway = leeway;
        self
    }

    /// Whether `exp` is required (default true). A token that carries `exp`
    /// is always checked against it.
    pub fn require_exp(mut self, yes: bool) -> Self {
        self.settings.require_exp = yes;
        self
    }

    /// Refuses tokens whose `exp` is more than `max` in the future (Kong's
    /// `maximum_expiration`); implies `exp` is required.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.settings.max_lifetime = Some(max);
        self
    }

    /// Requires a non-null claim at `path` (dotted, e.g. `tenant` or
    /// `realm_access.roles`).
    pub fn require_claim(mut self, path: &str) -> Self {
        self.settings.required_claims.push(ClaimPath::dotted(path));
        self
    }

    /// Where [`Identity::roles`] are read from (default `roles` and `role`).
    pub fn roles(mut self, source: RoleSource) -> Self {
        self.settings.role_source = source;
        self
    }

    /// Also accepts the token from this cookie (off by default).
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.sources.cookie = Some(name.into());
        self
    }

    /// Also accepts the token from this query parameter (off by default;
    /// query strings end up in access logs).
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.sources.query = Some(name.into());
        self
    }

    /// Longest token accepted, in bytes (default 8 KiB); longer ones are
    /// refused before any parsing.
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_token_len = bytes;
        self
    }

    /// Capacity of the cache of verified tokens (default 4096; 0 disables).
    ///
    /// A repeat token then costs a SHA-256 and a lookup instead of a
    /// signature check. Entries never outlive the token's `exp`, and are
    /// dropped when the issuer's key set changes.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.settings.cache_capacity = entries;
        self
    }

    /// Capacity of the negative cache of tokens that failed verification
    /// (default 4096; 0 disables).
    ///
    /// A repeated forged, expired or otherwise invalid token then costs a
    /// SHA-256 and a lookup instead of a signature check, and is refused
    /// with the same error. Entries live for [`Self::negative_cache_ttl`],
    /// and a failure that depends on the issuer's keys stops counting as
    /// soon as the key set changes, so a key published by a JWKS refresh is
    /// used at once. A token refused because it is not valid *yet* (`nbf`)
    /// or lives too long is never cached: time fixes both.
    pub fn negative_cache_capacity(mut self, entries: usize) -> Self {
        self.settings.rejected_capacity = entries;
        self
    }

    /// How long a failed token stays in the negative cache (default 5 s;
    /// zero disables the cache).
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.settings.rejected_ttl = ttl;
        self
    }

    /// Refuses token-carrying requests with 429 once their client address
    /// has caused `budget` failed verifications (off by default; see
    /// [`FailureBudget`]). The address is the request's
    /// [`ResolvedClient`](crate::client_addr::ResolvedClient); requests
    /// without a client address have no budget. Refusals are counted in the
    /// [metrics](Self::metrics) with the reason `auth_failure_budget`.
    pub fn failure_budget(mut self, budget: FailureBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Lets requests without any token through without an identity (default
    /// false); an invalid token is still refused. Use with an
    /// [`RbacLayer`](crate::rbac::RbacLayer) that marks public routes.
    pub fn allow_anonymous(mut self, yes: bool) -> Self {
        self.allow_anonymous = yes;
        self
    }

    /// Lets CORS preflight requests (`OPTIONS` with
    /// `Access-Control-Request-Method`) through unauthenticated, as Kong's
    /// `run_on_preflight = false` does (default false). Browsers never send
    /// credentials on a preflight.
    pub fn cors_preflight_passthrough(mut self, yes: bool) -> Self {
        self.preflight_passthrough = yes;
        self
    }

    /// Sends the verified subject to the upstream in header `name`. The
    /// header is removed from every incoming request first, so a client can
    /// never assert it. A subject a header cannot carry exactly (leading or
    /// trailing whitespace, control characters) is not forwarded.
    pub fn forward_subject(mut self, name: HeaderName) -> Self {
        self.forward_subject = Some(name);
        self
    }

    /// Sends the verified roles, comma separated, in header `name` (removed
    /// from incoming requests first, like [`Self::forward_subject`]). Role
    /// values containing a comma or padded with whitespace are left out:
    /// the upstream would read them as other roles.
    pub fn forward_roles(mut self, name: HeaderName) -> Self {
        self.forward_roles = Some(name);
        self
    }

    /// Removes header `name` from every incoming request — for identity
    /// headers that something downstream trusts.
    ///
    /// This header and those of [`Self::forward_subject`] and
    /// [`Self::forward_roles`] are removed in every spelling that swaps `-`
    /// and `_` (`X_User_Id` for `x-user-id`): CGI, WSGI, Rack and PHP
    /// servers read both as the same variable.
    pub fn strip_header(mut self, name: HeaderName) -> Self {
        self.stripped.push(name);
        self
    }

    /// Also deserializes the verified claims into `T` and puts it in the
    /// request extensions. A token whose claims do not fit `T` is refused.
    pub fn claims_extension<T>(mut self) -> Self
    where
        T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.claims_inserter =
            Some(Arc::new(
                |identity: &Identity, ext: &mut Extensions| match identity.deserialize_claims::<T>()
                {
                    Ok(value) => {
                        ext.insert(value);
                        true
                    }
                    Err(_) => false,
                },
            ));
        self
    }

    /// The `realm` of `WWW-Authenticate` challenges.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// Counts refusals (by reason) and JWKS refreshes in `metrics`.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: AuthMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// JWKS refresh timing.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn jwks_options(mut self, options: super::JwksOptions) -> Self {
        self.jwks_options = options;
        self
    }

    /// The HTTP client used for JWKS and OIDC discovery.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn http_client(mut self, config: super::HttpClientConfig) -> Self {
        self.http = config;
        self
    }

    /// Checks the configuration and builds the layer. Needs no Tokio
    /// runtime: the refresh task of a JWKS issuer starts with the layer's
    /// first use inside one (the first request, [`JwtAuthLayer::verify`]
    /// or [`JwtAuthLayer::wait_for_keys`]).
    pub fn build(self) -> Result<JwtAuthLayer, JwtConfigError> {
        if self.issuers.is_empty() {
            return Err(JwtConfigError::NoIssuer);
        }
        if !super::crypto::backend_works() {
            return Err(JwtConfigError::CryptoProvider);
        }
        let mut seen: Vec<Option<&str>> = Vec::new();
        for issuer in &self.issuers {
            let name = issuer.iss.as_deref();
            if seen.contains(&name) {
                return Err(JwtConfigError::DuplicateIssuer(
                    name.unwrap_or("<any>").into(),
                ));
            }
            seen.push(name);
            #[cfg(feature = "jwks")]
            let has_jwks = issuer.jwks.is_some();
            #[cfg(not(feature = "jwks"))]
            let has_jwks = false;
            if issuer.keys.is_empty() && !has_jwks {
                return Err(JwtConfigError::NoKeys(name.unwrap_or("<any>").into()));
            }
        }
        #[cfg(feature = "jwks")]
        let jwks = if self.issuers.iter().any(|i| i.jwks.is_some()) {
            Some((self.http.build()?, self.jwks_options, self.metrics.clone()))
        } else {
            None
        };
        let mut sources = self.sources;
        sources.max_len = self.settings.max_token_len;
        let verifier = Verifier::new(
            self.issuers,
            self.settings,
            #[cfg(feature = "jwks")]
            jwks,
        );
        let mut stripped = self.stripped;
        stripped.extend(self.forward_subject.iter().cloned());
        stripped.extend(self.forward_roles.iter().cloned());
        Ok(JwtAuthLayer {
            shared: Arc::new(Shared {
                verifier,
                sources,
                allow_anonymous: self.allow_anonymous,
                preflight_passthrough: self.preflight_passthrough,
                forward_subject: self.forward_subject,
                forward_roles: self.forward_roles,
                stripped,
                claims_inserter: self.claims_inserter,
                realm: self.realm,
                metrics: self.metrics,
                budget: self.budget.map(FailureLedger::new),
            }),
        })
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}
