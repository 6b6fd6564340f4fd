//! Token verification: the part of the layer that does not know about HTTP.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use quick_cache::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuthError, Issuer, store::KeyStore};
use crate::identity::{ClaimPath, Identity, RoleSource, numeric_date};

/// Claim checks shared by every issuer of a layer.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) leeway: Duration,
    pub(crate) require_exp: bool,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) required_claims: Vec<ClaimPath>,
    pub(crate) role_source: RoleSource,
    pub(crate) cache_capacity: usize,
    pub(crate) rejected_capacity: usize,
    pub(crate) rejected_ttl: Duration,
    pub(crate) max_token_len: usize,
}

struct IssuerState {
    iss: Option<String>,
    store: Arc<KeyStore>,
    #[cfg(feature = "jwks")]
    refresher: Option<Arc<super::jwks::Refresher>>,
    /// The refresher's task, spawned by the first use inside a runtime.
    #[cfg(feature = "jwks")]
    background: Option<crate::deferred::DeferredTask>,
}

/// A token that was verified before, remembered by the SHA-256 of the token
/// (the token itself is not kept in memory).
#[derive(Clone)]
struct CachedToken {
    identity: Identity,
    issuer: usize,
    generation: u64,
    exp: u64,
}

/// A token that failed verification, remembered (by the SHA-256 of the
/// token) for a short while so that a repeated forgery costs a lookup.
#[derive(Clone)]
struct RejectedToken {
    error: AuthError,
    /// The issuer whose keys refused it, and their generation then: a new
    /// key set is a new chance, so the entry only stands while the keys it
    /// was checked against are current. `None` for failures that no key set
    /// changes (a malformed token, an unknown issuer).
    keys: Option<(usize, u64)>,
    /// The failure asked for a JWKS refetch (unknown `kid`, or a bad
    /// signature under a known `kid` whose key may have been rotated): a
    /// repeat asks again, so the repeat waits for the new keys exactly as
    /// the first request did.
    refetch: bool,
    until: tokio::time::Instant,
}

/// A failed verification before it is reported: the error, and what the
/// negative cache needs to know about it.
struct Failed {
    failure: VerifyFailure,
    keys: Option<(usize, u64)>,
    refetch: bool,
}

impl From<AuthError> for Failed {
    fn from(error: AuthError) -> Self {
        Self {
            failure: error.into(),
            keys: None,
            refetch: false,
        }
    }
}

/// Why verification failed, and whether waiting for a JWKS refresh could help.
pub(crate) struct VerifyFailure {
    pub(crate) error: AuthError,
    #[cfg(feature = "jwks")]
    pub(crate) refresh: Option<(
        tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        Duration,
    )>,
}

impl From<AuthError> for VerifyFailure {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            #[cfg(feature = "jwks")]
            refresh: None,
        }
    }
}

/// Verifies tokens against a fixed list of issuers.
pub(crate) struct Verifier {
    issuers: Vec<IssuerState>,
    settings: Settings,
    cache: Option<Cache<[u8; 32], CachedToken>>,
    rejected: Option<Cache<[u8; 32], RejectedToken>>,
    #[cfg(test)]
    signature_checks: std::sync::atomic::AtomicUsize,
}

/// The part of the claims needed to pick the issuer before verifying.
#[derive(serde::Deserialize)]
struct PeekIss {
    iss: Option<String>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// Builds the verifier. JWKS refreshers are made now, and their tasks
    /// spawned by the first [`verify`](Self::verify) or
    /// [`has_keys`](Self::has_keys) inside a Tokio runtime: building needs
    /// no runtime.
    pub(crate) fn new(
        issuers: Vec<Issuer>,
        settings: Settings,
        #[cfg(feature = "jwks")] jwks: Option<(
            crate::client::HttpFetcher,
            super::jwks::JwksOptions,
            Option<super::metrics::AuthMetrics>,
        )>,
    ) -> Self {
        super::install_crypto_backend();
        let issuers = issuers
            .into_iter()
            .map(|issuer| {
                let store = Arc::new(KeyStore::new(
                    validation_template(&issuer, &settings),
                    issuer.keys.clone(),
                ));
                #[cfg(feature = "jwks")]
                let (refresher, background) = match (&issuer.jwks, &jwks) {
                    (Some(location), Some((fetcher, options, metrics))) => {
                        let (refresher, task) = super::jwks::refresher(
                            issuer.iss.clone().unwrap_or_default(),
                            location.clone(),
                            &store,
                            fetcher.clone(),
                            *options,
                            metrics.as_ref(),
                        );
                        (Some(refresher), Some(task))
                    }
                    _ => (None, None),
                };
                IssuerState {
                    iss: issuer.iss,
                    store,
                    #[cfg(feature = "jwks")]
                    refresher,
                    #[cfg(feature = "jwks")]
                    background,
                }
            })
            .collect();
        let cache = (settings.cache_capacity > 0).then(|| Cache::new(settings.cache_capacity));
        let rejected = (settings.rejected_capacity > 0 && !settings.rejected_ttl.is_zero())
            .then(|| Cache::new(settings.rejected_capacity));
        Self {
            issuers,
            settings,
            cache,
            rejected,
            #[cfg(test)]
            signature_checks: Default::default(),
        }
    }

    /// Spawns the JWKS refreshers on their first call inside a Tokio
    /// runtime; after that, one atomic load per JWKS issuer.
    #[inline]
    fn start_refreshers(&self) {
        #[cfg(feature = "jwks")]
        for issuer in &self.issuers {
            if let Some(task) = &issuer.background {
                task.start();
            }
        }
    }

    /// The refreshers, for readiness checks and counters.
    #[cfg(feature = "jwks")]
    pub(crate) fn refreshers(&self) -> impl Iterator<Item = &Arc<super::jwks::Refresher>> {
        self.issuers.iter().filter_map(|i| i.refresher.as_ref())
    }

    /// Whether every issuer can verify: its JWKS, if it has one, was
    /// fetched at least once (static keys beside a JWKS do not count: the
    /// tokens the provider issues are signed with the published keys), and
    /// it holds at least one key.
    pub(crate) fn has_keys(&self) -> bool {
        self.start_refreshers();
        self.issuers.iter().all(|i| {
            #[cfg(feature = "jwks")]
            if i.refresher.as_ref().is_some_and(|r| !r.loaded()) {
                return false;
            }
            !i.store.load().keys.is_empty()
        })
    }

    /// Verifies a token and builds the caller's identity.
    ///
    /// A token seen before costs a SHA-256 and a lookup: verified tokens
    /// come from the verified-token cache, failed ones from the negative
    /// cache, with the same error as the first time.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, VerifyFailure> {
        self.start_refreshers();
        if token.len() > self.settings.max_token_len {
            return Err(AuthError::TooLarge.into());
        }
        let now = unix_now();
        let digest: Option<[u8; 32]> =
            (self.cache.is_some() || self.rejected.is_some()).then(|| Sha256::digest(token).into());
        if let (Some(cache), Some(digest)) = (&self.cache, &digest)
            && let Some(hit) = cache.get(digest)
        {
            if now < hit.exp && self.issuers[hit.issuer].store.generation() == hit.generation {
                return Ok(hit.identity);
            }
            cache.remove(digest);
        }
        if let (Some(rejected), Some(digest)) = (&self.rejected, &digest)
            && let Some(hit) = rejected.get(digest)
        {
            let keys_current = hit
                .keys
                .is_none_or(|(i, generation)| self.issuers[i].store.generation() == generation);
            if keys_current && tokio::time::Instant::now() < hit.until {
                return Err(match hit.keys {
                    Some((i, _)) if hit.refetch => self.refetch(&self.issuers[i], hit.error),
                    _ => hit.error.into(),
                });
            }
            rejected.remove(digest);
        }
        match self.verify_uncached(token, now, digest) {
            Ok(identity) => Ok(identity),
            Err(failed) => {
                if let (Some(rejected), Some(digest)) = (&self.rejected, digest)
                    && stays_invalid(&failed.failure.error)
                {
                    rejected.insert(
                        digest,
                        RejectedToken {
                            error: failed.failure.error.clone(),
                            keys: failed.keys,
                            refetch: failed.refetch,
                            until: tokio::time::Instant::now() + self.settings.rejected_ttl,
                        },
                    );
                }
                Err(failed.failure)
            }
        }
    }

    fn verify_uncached(
        &self,
        token: &str,
        now: u64,
        digest: Option<[u8; 32]>,
    ) -> Result<Identity, Failed> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.kid.as_ref().is_some_and(|kid| kid.len() > 256) {
            return Err(AuthError::Malformed.into());
        }
        // RFC 7515 §4.1.11: extensions listed in `crit` MUST be understood
        // or the JWS is invalid. We understand none, and jsonwebtoken does
        // not look at `crit`: accepting would drop the meaning the issuer
        // marked as critical (e.g. `b64: false`, RFC 7797).
        if header.crit.is_some() {
            return Err(AuthError::Malformed.into());
        }
        let issuer_index = self.select_issuer(token)?;
        let issuer = &self.issuers[issuer_index];
        let snapshot = issuer.store.load();
        let keys = Some((issuer_index, snapshot.generation));
        let candidates = match snapshot.candidates(header.kid.as_deref(), header.alg) {
            Ok(candidates) => candidates,
            Err(error) => {
                return Err(Failed {
                    failure: self.refetch(issuer, error),
                    keys,
                    refetch: true,
                });
            }
        };

        let mut last_error = AuthError::InvalidSignature;
        let mut claims = None;
        for key in candidates {
            #[cfg(test)]
            self.signature_checks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match decode::<Map<String, Value>>(token, &key.key.decoding, &key.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(error) => {
                    last_error = AuthError::from_jwt(&error);
                    // Only a bad signature means "try the next key"; any
                    // other failure happened after the signature verified.
                    if last_error != AuthError::InvalidSignature {
                        break;
                    }
                }
            }
        }
        let Some(claims) = claims else {
            // The key named by `kid` refused the signature. The issuer may
            // have rotated the key material but kept the `kid` (RFC 7517
            // does not forbid it, and some servers do): refetch, with the
            // same rate limit as for an unknown `kid`, so a token signed
            // with the new key verifies once it is published.
            if last_error == AuthError::InvalidSignature && header.kid.is_some() {
                return Err(Failed {
                    failure: self.refetch(issuer, last_error),
                    keys,
                    refetch: true,
                });
            }
            return Err(Failed {
                failure: last_error.into(),
                keys,
                refetch: false,
            });
        };
        self.check_claims(&claims, now).map_err(|error| Failed {
            failure: error.into(),
            keys,
            refetch: false,
        })?;
        // The same reading of `exp` as the claims check above: the cache
        // never keeps an entry longer than verification would accept it.
        let exp = claims.get("exp").and_then(numeric_date);
        let identity =
            Identity::try_from_claims(claims, &self.settings.role_source).map_err(|_| Failed {
                failure: AuthError::InvalidRoles.into(),
                keys,
                refetch: false,
            })?;
        if let (Some(cache), Some(digest), Some(exp)) = (&self.cache, digest, exp) {
            cache.insert(
                digest,
                CachedToken {
                    identity: identity.clone(),
                    issuer: issuer_index,
                    generation: snapshot.generation,
                    exp,
                },
            );
        }
        Ok(identity)
    }

    /// Verifies again after JWKS fetches, until the token verifies, fails
    /// for another reason, a fetch that started after the request arrived
    /// has been seen (the key is not published), or `wait` is over. A
    /// request never waits for more than one fetch it could not have
    /// benefited from.
    #[cfg(feature = "jwks")]
    pub(crate) async fn verify_after_refresh(
        &self,
        token: &str,
        mut updated: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        wait: Duration,
        first_error: AuthError,
    ) -> Result<Identity, AuthError> {
        let arrived = tokio::time::Instant::now();
        let deadline = arrived + wait;
        let mut error = first_error;
        loop {
            match tokio::time::timeout_at(deadline, updated.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(error),
            }
            let fetch_started = *updated.borrow_and_update();
            match self.verify(token) {
                Ok(identity) => return Ok(identity),
                Err(failure) => {
                    let fresh_fetch_seen = fetch_started.is_some_and(|t| t >= arrived);
                    if failure.refresh.is_none() || fresh_fetch_seen {
                        return Err(failure.error);
                    }
                    error = failure.error;
                }
            }
        }
    }

    fn select_issuer(&self, token: &str) -> Result<usize, AuthError> {
        if self.issuers.len() == 1 {
            return Ok(0);
        }
        // Only picks whose keys to try: the chosen issuer's validation then
        // checks `iss` again on the verified claims.
        let peek: PeekIss = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::Malformed)?;
        let named = peek.iss.as_deref().and_then(|iss| {
            self.issuers
                .iter()
                .position(|i| i.iss.as_deref() == Some(iss))
        });
        named
            .or_else(|| self.issuers.iter().position(|i| i.iss.is_none()))
            .ok_or(AuthError::InvalidIssuer)
    }

    /// A failure that newer keys might fix: asks the issuer's JWKS
    /// refresher (if any) for a refetch, and says whether to wait for it.
    #[cfg_attr(not(feature = "jwks"), allow(unused_variables))]
    fn refetch(&self, issuer: &IssuerState, error: AuthError) -> VerifyFailure {
        #[cfg(feature = "jwks")]
        if let Some(refresher) = &issuer.refresher {
            // An unknown kid, no key for this alg yet (JWKS not loaded), or
            // a rotated key under a known kid may be a key the auth server
            // published after our last fetch.
            let refresh = refresher.request().map(|rx| (rx, refresher.wait()));
            return VerifyFailure { error, refresh };
        }
        error.into()
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), AuthError> {
        if let Some(max) = self.settings.max_lifetime {
            let exp = claims
                .get("exp")
                .and_then(numeric_date)
                .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
            if exp.saturating_sub(now) > max.as_secs() {
                return Err(AuthError::LifetimeTooLong);
            }
        }
        for path in &self.settings.required_claims {
            if path.lookup(claims).is_none_or(Value::is_null) {
                return Err(AuthError::MissingClaim(path.to_string()));
            }
        }
        Ok(())
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        #[cfg(feature = "jwks")]
        for refresher in self.refreshers() {
            refresher.stop();
        }
    }
}

/// Whether a failure will stand for as long as the negative cache keeps it
/// (bounded anyway by its TTL and, for key-dependent failures, by the key
/// set's generation). A token not yet valid, or whose lifetime is still too
/// long, becomes acceptable with time.
fn stays_invalid(error: &AuthError) -> bool {
    !matches!(
        error,
        AuthError::NotYetValid | AuthError::LifetimeTooLong | AuthError::TooLarge
    )
}

fn validation_template(issuer: &Issuer, settings: &Settings) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.required_spec_claims.clear();
    if settings.require_exp {
        validation.required_spec_claims.insert("exp".into());
    }
    if let Some(iss) = &issuer.iss {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".into());
    }
    if issuer.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&issuer.audiences);
        validation.required_spec_claims.insert("aud".into());
    }
    validation
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::auth::JwtKey;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn settings() -> Settings {
        Settings {
            leeway: Duration::ZERO,
            require_exp: true,
            max_lifetime: None,
            required_claims: Vec::new(),
            role_source: RoleSource::default(),
            cache_capacity: 64,
            rejected_capacity: 64,
            rejected_ttl: Duration::from_secs(5),
            max_token_len: 8192,
        }
    }

    fn verifier(settings: Settings) -> Verifier {
        let issuer = Issuer::new("iss").key(JwtKey::hmac(SECRET).kid("k"));
        Verifier::new(
            vec![issuer],
            settings,
            #[cfg(feature = "jwks")]
            None,
        )
    }

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "iss", "sub": "alice", "exp": unix_now() + 600})
    }

    fn checks(v: &Verifier) -> usize {
        v.signature_checks.load(Ordering::Relaxed)
    }

    fn error(v: &Verifier, token: &str) -> AuthError {
        match v.verify(token) {
            Ok(_) => panic!("accepted"),
            Err(failure) => failure.error,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_forgery_is_refused_from_the_negative_cache_until_ttl() {
        let v = verifier(settings());
        let forged = token(OTHER, claims());
        assert_eq!(error(&v, &forged), AuthError::InvalidSignature);
        assert_eq!(checks(&v), 1);
        for _ in 0..10 {
            assert_eq!(error(&v, &forged), AuthError::InvalidSignature);
        }
        assert_eq!(checks(&v), 1, "a repeat checked the signature again");
        // A different token is not answered from the cache.
        assert!(v.verify(&token(SECRET, claims())).is_ok());
        assert_eq!(checks(&v), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(error(&v, &forged), AuthError::InvalidSignature);
        assert_eq!(checks(&v), 3, "the entry outlived its TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn negative_cache_can_be_disabled() {
        let mut s = settings();
        s.rejected_capacity = 0;
        let v = verifier(s);
        let forged = token(OTHER, claims());
        for _ in 0..3 {
            assert_eq!(error(&v, &forged), AuthError::InvalidSignature);
        }
        assert_eq!(checks(&v), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn not_yet_valid_tokens_are_not_negatively_cached() {
        let v = verifier(settings());
        let mut c = claims();
        c["nbf"] = json!(unix_now() + 300);
        let early = token(SECRET, c);
        assert_eq!(error(&v, &early), AuthError::NotYetValid);
        assert_eq!(error(&v, &early), AuthError::NotYetValid);
        assert_eq!(checks(&v), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_key_set_voids_cached_failures() {
        // Keys as a JWKS would publish them: first SECRET under kid "k",
        // then OTHER under the same kid (rotation without a new kid).
        let v = Verifier::new(
            vec![Issuer::new("iss")],
            settings(),
            #[cfg(feature = "jwks")]
            None,
        );
        v.issuers[0]
            .store
            .install(vec![JwtKey::hmac(SECRET).kid("k")]);
        let rotated = token(OTHER, claims());
        assert_eq!(error(&v, &rotated), AuthError::InvalidSignature);
        assert_eq!(error(&v, &rotated), AuthError::InvalidSignature);
        assert_eq!(checks(&v), 1);
        v.issuers[0]
            .store
            .install(vec![JwtKey::hmac(OTHER).kid("k")]);
        assert!(v.verify(&rotated).is_ok(), "a stale failure was served");

        // The same for a kid that was unknown when the token first came.
        let fresh = {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k2".into());
            encode(&header, &claims(), &EncodingKey::from_secret(SECRET)).unwrap()
        };
        assert_eq!(error(&v, &fresh), AuthError::UnknownKey);
        assert_eq!(error(&v, &fresh), AuthError::UnknownKey);
        v.issuers[0].store.install(vec![
            JwtKey::hmac(OTHER).kid("k"),
            JwtKey::hmac(SECRET).kid("k2"),
        ]);
        assert!(
            v.verify(&fresh).is_ok(),
            "a stale unknown-kid failure was served"
        );
    }
}
