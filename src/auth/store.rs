//! The current keys of one issuer, read lock-free on the request path.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation};

use super::{AuthError, JwtKey};

/// A key ready to verify: the pinned key and the validation rules of its
/// issuer, narrowed to the key's algorithms.
pub(crate) struct PreparedKey {
    pub(crate) key: JwtKey,
    pub(crate) validation: Validation,
}

/// An immutable set of keys; replaced whole when the JWKS changes.
pub(crate) struct KeySnapshot {
    pub(crate) keys: Vec<PreparedKey>,
    /// Bumped on every replacement: cached verifications made with an older
    /// generation are not trusted, so a key removed from the JWKS stops
    /// working at once even for tokens in the cache.
    pub(crate) generation: u64,
}

impl KeySnapshot {
    /// The keys that may verify a token with this `kid` and `alg`.
    ///
    /// With a `kid`, only the key of that ID, and only if it accepts `alg`;
    /// without one, every key that accepts `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> Result<Vec<&'a PreparedKey>, AuthError> {
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.key.kid.as_deref() == Some(kid))
                    .ok_or(AuthError::UnknownKey)?;
                if key.key.accepts(alg) {
                    Ok(vec![key])
                } else {
                    Err(AuthError::AlgorithmNotAccepted)
                }
            }
            None => {
                let keys: Vec<_> = self.keys.iter().filter(|k| k.key.accepts(alg)).collect();
                if keys.is_empty() {
                    Err(AuthError::AlgorithmNotAccepted)
                } else {
                    Ok(keys)
                }
            }
        }
    }
}

/// The keys of one issuer: its static keys plus whatever its JWKS last
/// published.
pub(crate) struct KeyStore {
    template: Validation,
    static_keys: Vec<JwtKey>,
    current: ArcSwap<KeySnapshot>,
    next_generation: AtomicU64,
}

impl KeyStore {
    pub(crate) fn new(template: Validation, static_keys: Vec<JwtKey>) -> Self {
        let store = Self {
            current: ArcSwap::from_pointee(KeySnapshot {
                keys: Vec::new(),
                generation: 0,
            }),
            template,
            static_keys,
            next_generation: AtomicU64::new(1),
        };
        store.install(Vec::new());
        store
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Replaces the published (JWKS) keys; static keys always stay.
    pub(crate) fn install(&self, published: Vec<JwtKey>) {
        let keys = self
            .static_keys
            .iter()
            .cloned()
            .chain(published)
            .map(|key| {
                let mut validation = self.template.clone();
                validation.algorithms = key.algorithms.clone();
                PreparedKey { key, validation }
            })
            .collect();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.current
            .store(Arc::new(KeySnapshot { keys, generation }));
    }
}
