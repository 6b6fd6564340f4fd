use std::time::Duration;

use http::{HeaderValue, header};

use crate::reject::{Rejection, RejectionKind};

/// Why a request failed authentication.
///
/// Every variant but [`AuthError::FailureBudgetExhausted`] (429) is
/// answered with 401. [`AuthError::reason`] is a stable
/// label for metrics and logs; clients see only RFC 6750's `invalid_token`
/// (or no error code at all when no token was sent) and a description that
/// says no more than "expired" or "invalid", so the response never tells an
/// attacker which check a forged token failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no token.
    #[error("no bearer token")]
    Missing,
    /// The request carries more than one token (token smuggling).
    #[error("more than one token in the request")]
    Multiple,
    /// The token is not a well-formed JWS compact serialization.
    #[error("malformed token")]
    Malformed,
    /// The token is longer than the configured maximum.
    #[error("token too large")]
    TooLarge,
    /// No configured key accepts the token's `alg`.
    #[error("algorithm not accepted")]
    AlgorithmNotAccepted,
    /// No key with the token's `kid` is known (a JWKS refresh was requested).
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not a configured issuer.
    #[error("issuer not accepted")]
    InvalidIssuer,
    /// `aud` names none of the configured audiences.
    #[error("audience not accepted")]
    InvalidAudience,
    /// A required claim is absent or has the wrong type.
    #[error("required claim missing or malformed: {0}")]
    MissingClaim(String),
    /// `exp` is further in the future than the configured maximum lifetime.
    #[error("token lifetime exceeds the maximum")]
    LifetimeTooLong,
    /// The token verified, but its role claim has another shape than an
    /// array of strings under a strict
    /// [`RoleSource`](crate::identity::RoleSource::strict). Answered with
    /// 403 (`invalid_roles_claim`): the caller is known, its roles are not.
    #[error("the role claim is not an array of strings")]
    InvalidRoles,
    /// The client address sent too many tokens that failed verification
    /// (its [`FailureBudget`](super::FailureBudget) is spent); the token was
    /// not looked at. Answered with 429 and `Retry-After`.
    #[error("too many failed authentications")]
    FailureBudgetExhausted {
        /// When the address's budget window closes.
        retry_after: Duration,
    },
}

impl AuthError {
    /// A short stable label (`missing`, `expired`, `invalid_signature`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Multiple => "multiple",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::AlgorithmNotAccepted => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidIssuer => "issuer",
            Self::InvalidAudience => "audience",
            Self::MissingClaim(_) => "claims",
            Self::LifetimeTooLong => "lifetime",
            Self::FailureBudgetExhausted { .. } => "auth_failure_budget",
            Self::InvalidRoles => "invalid_roles",
        }
    }

    /// The rejection for this error: 401 with a challenge (RFC 6750 §3), or
    /// 429 with `Retry-After` in whole seconds, rounded up (RFC 9110
    /// §10.2.3), for [`AuthError::FailureBudgetExhausted`].
    pub fn rejection(&self, realm: Option<&str>) -> Rejection {
        match self {
            Self::FailureBudgetExhausted { retry_after } => {
                let secs = retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                    .max(1);
                Rejection::new(
                    RejectionKind::TooManyRequests,
                    "auth_failure_budget",
                    "too many failed authentication attempts",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
            }
            Self::InvalidRoles => Rejection::new(
                RejectionKind::Forbidden,
                "invalid_roles_claim",
                "the token's role claim is not an array of strings",
            ),
            Self::Missing => Rejection::unauthenticated(realm, None, "authentication required"),
            Self::Expired => {
                Rejection::unauthenticated(realm, Some("invalid_token"), "the access token expired")
            }
            _ => Rejection::unauthenticated(
                realm,
                Some("invalid_token"),
                "the access token is invalid",
            ),
        }
    }

    pub(crate) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match error.kind() {
            K::InvalidSignature => Self::InvalidSignature,
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidIssuer => Self::InvalidIssuer,
            K::InvalidAudience => Self::InvalidAudience,
            K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => Self::MissingClaim(c.clone()),
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                Self::AlgorithmNotAccepted
            }
            // Key-format errors surface as an invalid signature: the token
            // cannot be verified with the key it names.
            K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                Self::InvalidSignature
            }
            _ => Self::Malformed,
        }
    }
}
