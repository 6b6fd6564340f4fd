use std::{fmt, sync::Arc};

#[cfg(feature = "jwks")]
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// A verification key pinned to one algorithm family.
///
/// A key only ever verifies tokens whose `alg` is one of its algorithms, all
/// from the family the key material belongs to: an HMAC secret is never
/// offered an RS256 token and an RSA public key is never used as an HMAC
/// secret, so algorithm-confusion attacks are impossible by construction.
///
/// ```
/// use tower_gateway::auth::{Algorithm, JwtKey};
///
/// let hs = JwtKey::hmac(b"a-long-random-secret-of-32-bytes!").kid("2024-06");
/// let pinned = JwtKey::hmac(b"another-secret").algorithms([Algorithm::HS256]).unwrap();
/// ```
#[derive(Clone)]
pub struct JwtKey {
    pub(crate) kid: Option<String>,
    pub(crate) family: AlgorithmFamily,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) decoding: Arc<DecodingKey>,
}

/// A key that could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM or DER material is not a key of the expected type.
    #[error("invalid {family} key: {source}")]
    Invalid {
        /// The key family that was expected.
        family: &'static str,
        /// What the JWT library reported.
        source: jsonwebtoken::errors::Error,
    },
    /// An algorithm outside the key's family was requested.
    #[error("algorithm {0:?} does not belong to the key's family")]
    WrongFamily(Algorithm),
    /// An empty algorithm list was given.
    #[error("a key needs at least one algorithm")]
    NoAlgorithm,
}

impl JwtKey {
    fn from_parts(family: AlgorithmFamily, decoding: DecodingKey) -> Self {
        Self {
            kid: None,
            family,
            algorithms: family.algorithms().to_vec(),
            decoding: Arc::new(decoding),
        }
    }

    /// An HMAC secret (HS256/384/512). Use at least 32 random bytes.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self::from_parts(
            AlgorithmFamily::Hmac,
            DecodingKey::from_secret(secret.as_ref()),
        )
    }

    /// An RSA public key in PEM (PKCS#1 or SPKI), for RS* and PS*.
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        DecodingKey::from_rsa_pem(pem.as_ref())
            .map(|k| Self::from_parts(AlgorithmFamily::Rsa, k))
            .map_err(|source| KeyError::Invalid {
                family: "RSA",
                source,
            })
    }

    /// An RSA public key in PKCS#1 DER, for RS* and PS*.
    pub fn rsa_der(der: impl AsRef<[u8]>) -> Self {
        Self::from_parts(
            AlgorithmFamily::Rsa,
            DecodingKey::from_rsa_der(der.as_ref()),
        )
    }

    /// An EC public key (P-256 or P-384) in PEM, for ES256/ES384.
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        DecodingKey::from_ec_pem(pem.as_ref())
            .map(|k| Self::from_parts(AlgorithmFamily::Ec, k))
            .map_err(|source| KeyError::Invalid {
                family: "EC",
                source,
            })
    }

    /// An EC public key as an uncompressed SEC1 point (DER), for ES256/ES384.
    pub fn ec_der(der: impl AsRef<[u8]>) -> Self {
        Self::from_parts(AlgorithmFamily::Ec, DecodingKey::from_ec_der(der.as_ref()))
    }

    /// An Ed25519 public key in PEM, for EdDSA.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        DecodingKey::from_ed_pem(pem.as_ref())
            .map(|k| Self::from_parts(AlgorithmFamily::Ed, k))
            .map_err(|source| KeyError::Invalid {
                family: "Ed25519",
                source,
            })
    }

    /// An Ed25519 public key as its 32 raw bytes, for EdDSA.
    pub fn ed_der(der: impl AsRef<[u8]>) -> Self {
        Self::from_parts(AlgorithmFamily::Ed, DecodingKey::from_ed_der(der.as_ref()))
    }

    /// Sets the key ID that tokens name in their `kid` header.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Narrows the key to these algorithms (all of its own family).
    pub fn algorithms(
        mut self,
        algorithms: impl IntoIterator<Item = Algorithm>,
    ) -> Result<Self, KeyError> {
        let algorithms: Vec<Algorithm> = algorithms.into_iter().collect();
        if algorithms.is_empty() {
            return Err(KeyError::NoAlgorithm);
        }
        if let Some(wrong) = algorithms.iter().find(|a| a.family() != self.family) {
            return Err(KeyError::WrongFamily(*wrong));
        }
        self.algorithms = algorithms;
        Ok(self)
    }

    /// The key ID, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Converts one JWK of a JWKS into a pinned key.
    ///
    /// Returns `None` for keys that must not or cannot verify signatures:
    /// encryption keys (`use: enc`, `key_ops` without `verify`), algorithms
    /// this crate does not verify, curves other than P-256, P-384 and
    /// Ed25519, and symmetric (`oct`) keys — a secret published in a JWKS is
    /// no secret, and accepting it would let anyone mint HS256 tokens.
    #[cfg(feature = "jwks")]
    pub(crate) fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            return None;
        }
        if let Some(ops) = &jwk.common.key_operations
            && !ops.contains(&KeyOperations::Verify)
        {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 | EllipticCurve::P384 => AlgorithmFamily::Ec,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                AlgorithmFamily::Ed
            }
            _ => return None,
        };
        let algorithms = match jwk.common.key_algorithm {
            Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
            Some(alg) => {
                let alg = key_algorithm(alg)?;
                if alg.family() != family {
                    return None;
                }
                vec![alg]
            }
            None => match &jwk.algorithm {
                // Without `alg`, the curve decides: RFC 7518 §3.4 ties ES256
                // to P-256 and ES384 to P-384.
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    vec![Algorithm::ES256]
                }
                AlgorithmParameters::EllipticCurve(_) => vec![Algorithm::ES384],
                _ => family.algorithms().to_vec(),
            },
        };
        let decoding = DecodingKey::from_jwk(jwk).ok()?;
        Some(Self {
            kid: jwk.common.key_id.clone(),
            family,
            algorithms,
            decoding: Arc::new(decoding),
        })
    }
}

/// The signing algorithm a JWK's `alg` names; `None` for encryption
/// algorithms and unknown names.
#[cfg(feature = "jwks")]
fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Parses a JWKS document into pinned keys, skipping keys that cannot verify
/// signatures. Errors only when the document itself is not a JWKS.
#[cfg(feature = "jwks")]
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<JwtKey>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for value in raw.keys {
        // One unsupported key (say, an encryption key of a new type) must not
        // make the whole set unusable.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = JwtKey::from_jwk(&jwk) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_refuses_other_families() {
        let err = JwtKey::hmac(b"s")
            .algorithms([Algorithm::RS256])
            .unwrap_err();
        assert!(matches!(err, KeyError::WrongFamily(Algorithm::RS256)));
        assert!(matches!(
            JwtKey::hmac(b"s").algorithms([]),
            Err(KeyError::NoAlgorithm)
        ));
    }

    #[cfg(feature = "jwks")]
    #[test]
    fn jwks_skips_symmetric_encryption_and_unknown_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB","kid":"enc"},
            {"kty":"XYZ","kid":"odd"},
            {"kty":"EC","crv":"P-256","kid":"ec","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id(), Some("ec"));
        assert_eq!(keys[0].algorithms, [Algorithm::ES256]);
        assert!(parse_jwks(b"<html>").is_err());
    }
}
