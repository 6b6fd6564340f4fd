//! The verified caller: one type that every layer and handler reads.
//!
//! [`Identity`] is put into request extensions only by layers that verified
//! it ([`JwtAuthLayer`](crate::auth::JwtAuthLayer) from a token, the mTLS
//! helpers from a client certificate). RBAC, rate-limit keys, metrics and
//! handlers read it from there; nothing downstream ever reads an unverified
//! token.
//!
//! ```
//! use tower_gateway::identity::Identity;
//!
//! let claims = serde_json::json!({
//!     "sub": "alice",
//!     "roles": ["admin"],
//!     "scope": "orders:read orders:write"
//! });
//! let identity = Identity::from_claims(claims.as_object().unwrap().clone(), &Default::default());
//! assert_eq!(identity.subject(), Some("alice"));
//! assert!(identity.has_role("admin"));
//! assert!(identity.has_scope("orders:write"));
//! ```

use std::{fmt, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A verified caller: subject, roles, scopes, the raw verified claims, and
/// the verified mTLS peer when there is one.
///
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    subject: Option<String>,
    issuer: Option<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    claims: Map<String, Value>,
    expires_at: Option<u64>,
    peer: Option<PeerIdentity>,
}

impl Identity {
    /// Builds an identity from claims that have already been verified,
    /// taking the roles where `roles` says.
    ///
    /// Scopes come from the `scope` claim (space separated, RFC 8693 §4.2) or
    /// `scp` (a string or an array, as Azure AD and Okta send it).
    pub fn from_claims(claims: Map<String, Value>, roles: &RoleSource) -> Self {
        let role_list = roles.extract(&claims);
        Self::with_roles(claims, role_list)
    }

    /// Like [`from_claims`](Self::from_claims), refusing role claims of the
    /// wrong shape under a [strict](RoleSource::strict) role source.
    pub fn try_from_claims(
        claims: Map<String, Value>,
        roles: &RoleSource,
    ) -> Result<Self, RoleClaimError> {
        let role_list = roles.try_extract(&claims)?;
        Ok(Self::with_roles(claims, role_list))
    }

    fn with_roles(claims: Map<String, Value>, role_list: Vec<String>) -> Self {
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        let issuer = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
        let expires_at = claims.get("exp").and_then(numeric_date);
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            if let Some(value) = claims.get(name) {
                collect_strings(value, &mut scopes);
            }
        }
        Self {
            inner: Arc::new(Inner {
                subject,
                issuer,
                roles: role_list,
                scopes,
                claims,
                expires_at,
                peer: None,
            }),
        }
    }

    /// An identity established by a verified client certificate only,
    /// holding no roles.
    pub fn from_peer(peer: PeerIdentity) -> Self {
        Self::from_peer_with_roles(peer, Vec::new())
    }

    /// An identity established by a verified client certificate, holding
    /// `roles` (granted by configuration, e.g. per SPIFFE ID).
    ///
    /// Its [`subject`](Self::subject) is the peer's first URI SAN (a SPIFFE
    /// ID), else its first DNS SAN, else its subject DN, so consumer-keyed
    /// rate limits, per-consumer metrics and logs treat services like users.
    pub fn from_peer_with_roles(peer: PeerIdentity, roles: Vec<String>) -> Self {
        let subject = peer
            .sans
            .iter()
            .find(|san| san.contains("://"))
            .or_else(|| peer.sans.first())
            .cloned()
            .or_else(|| (!peer.subject.is_empty()).then(|| peer.subject.clone()));
        Self {
            inner: Arc::new(Inner {
                subject,
                issuer: None,
                roles,
                scopes: Vec::new(),
                claims: Map::new(),
                expires_at: None,
                peer: Some(peer),
            }),
        }
    }

    /// The same identity, with the verified mTLS peer attached.
    pub fn with_peer(self, peer: PeerIdentity) -> Self {
        let inner = Arc::unwrap_or_clone(self.inner);
        Self {
            inner: Arc::new(Inner {
                peer: Some(peer),
                ..inner
            }),
        }
    }

    /// The `sub` claim — or, for an identity from a client certificate
    /// alone, the peer's name (see [`Identity::from_peer_with_roles`]).
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    /// The `iss` claim.
    pub fn issuer(&self) -> Option<&str> {
        self.inner.issuer.as_deref()
    }

    /// The caller's roles, as the configured [`RoleSource`] found them.
    pub fn roles(&self) -> &[String] {
        &self.inner.roles
    }

    /// Whether the caller has `role` (exact match; RBAC applies hierarchies).
    pub fn has_role(&self, role: &str) -> bool {
        self.inner.roles.iter().any(|r| r == role)
    }

    /// The caller's OAuth2 scopes.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// Whether the caller was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.scopes.iter().any(|s| s == scope)
    }

    /// All verified claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.inner.claims
    }

    /// The claim at `path` (see [`ClaimPath`]).
    pub fn claim(&self, path: &ClaimPath) -> Option<&Value> {
        path.lookup(&self.inner.claims)
    }

    /// Deserializes the verified claims into the caller's own type.
    pub fn deserialize_claims<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&Value::Object(self.inner.claims.clone()))
    }

    /// The `exp` claim, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.inner.expires_at
    }

    /// The verified mTLS peer, when the connection presented a client
    /// certificate that was verified.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.inner.peer.as_ref()
    }
}

impl fmt::Debug for Identity {
    // Claims are left out: they may hold personal data that has no place in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.inner.subject)
            .field("issuer", &self.inner.issuer)
            .field("roles", &self.inner.roles)
            .field("scopes", &self.inner.scopes)
            .field("peer", &self.inner.peer)
            .finish_non_exhaustive()
    }
}

/// The identity of a peer proven by a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's subject distinguished name, as text.
    pub subject: String,
    /// DNS and URI subject alternative names (SPIFFE IDs are URIs).
    pub sans: Vec<String>,
}

/// A path into the claims object, one name per level: `realm_access.roles`
/// is `["realm_access", "roles"]`.
///
/// Built from segments so that names containing dots (Keycloak client IDs
/// such as `my.app` under `resource_access`) need no escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    /// A path from its segments.
    pub fn new<I, S>(segments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(segments.into_iter().map(Into::into).collect())
    }

    /// A path from a dotted string: `"realm_access.roles"`.
    pub fn dotted(path: &str) -> Self {
        Self::new(path.split('.'))
    }

    /// The value at this path, if every level exists.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for segment in rest {
            value = value.as_object()?.get(segment)?;
        }
        Some(value)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Where the roles of a caller are read from the verified claims.
///
/// Each configured claim may hold a string (split on whitespace, as OAuth2's
/// `scope` is) or an array of strings; the roles of all configured claims are
/// merged. The default reads `roles` and `role`.
///
/// ```
/// use tower_gateway::identity::{ClaimPath, RoleSource};
///
/// // Keycloak realm roles and the roles of client `orders-api`.
/// let source = RoleSource::new([
///     ClaimPath::dotted("realm_access.roles"),
///     ClaimPath::new(["resource_access", "orders-api", "roles"]),
/// ]);
/// let claims = serde_json::json!({
///     "realm_access": {"roles": ["user"]},
///     "resource_access": {"orders-api": {"roles": ["orders-admin"]}}
/// });
/// assert_eq!(source.extract(claims.as_object().unwrap()), ["user", "orders-admin"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSource {
    paths: Vec<ClaimPath>,
    strict: bool,
}

/// A role claim of the wrong shape, under [`RoleSource::strict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the role claim {0} is not an array of strings")]
pub struct RoleClaimError(pub String);

impl RoleSource {
    /// Roles from every claim in `paths`, merged in order without duplicates.
    pub fn new(paths: impl IntoIterator<Item = ClaimPath>) -> Self {
        Self {
            paths: paths.into_iter().collect(),
            strict: false,
        }
    }

    /// Accepts only arrays of strings: a role claim that is a string (which
    /// the lenient default splits on whitespace), or any other shape, is an
    /// error — `JwtAuthLayer` answers 403 `invalid_roles_claim` — instead of
    /// being read or ignored. Use it with an identity provider whose role
    /// claims are always arrays, so that a token minted another way cannot
    /// pass a string that happens to split into a role.
    ///
    /// ```
    /// use tower_gateway::identity::RoleSource;
    ///
    /// let strict = RoleSource::claim("roles").strict();
    /// let ok = serde_json::json!({"roles": ["user", "admin"]});
    /// assert_eq!(strict.try_extract(ok.as_object().unwrap()).unwrap(), ["user", "admin"]);
    /// let string = serde_json::json!({"roles": "user admin"});
    /// assert!(strict.try_extract(string.as_object().unwrap()).is_err());
    /// ```
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Reads the roles out of verified claims; under
    /// [`strict`](Self::strict), a claim of another shape than an array of
    /// strings is an error (an absent claim is no roles).
    pub fn try_extract(&self, claims: &Map<String, Value>) -> Result<Vec<String>, RoleClaimError> {
        if !self.strict {
            return Ok(self.extract(claims));
        }
        let mut roles = Vec::new();
        for path in &self.paths {
            let Some(value) = path.lookup(claims) else {
                continue;
            };
            let Some(items) = value.as_array() else {
                return Err(RoleClaimError(path.to_string()));
            };
            for item in items {
                let Some(role) = item.as_str() else {
                    return Err(RoleClaimError(path.to_string()));
                };
                if !role.is_empty() && !roles.iter().any(|r| r == role) {
                    roles.push(role.to_owned());
                }
            }
        }
        Ok(roles)
    }

    /// Roles from one claim, given as a dotted path.
    pub fn claim(path: &str) -> Self {
        Self::new([ClaimPath::dotted(path)])
    }

    /// Roles from the space-separated `scope` claim.
    pub fn scope() -> Self {
        Self::claim("scope")
    }

    /// Reads the roles out of verified claims.
    pub fn extract(&self, claims: &Map<String, Value>) -> Vec<String> {
        let mut roles = Vec::new();
        for path in &self.paths {
            if let Some(value) = path.lookup(claims) {
                collect_strings(value, &mut roles);
            }
        }
        roles
    }
}

impl Default for RoleSource {
    fn default() -> Self {
        Self::new([ClaimPath::dotted("roles"), ClaimPath::dotted("role")])
    }
}

/// A NumericDate claim (`exp`, `nbf`) in whole seconds, read exactly as the
/// token verifier (jsonwebtoken) reads it: a non-negative integer, or a
/// finite non-negative fraction below `u64::MAX`, rounded (RFC 7519 §2
/// allows fractions). Reading only integers here made a fractional `exp`
/// that verification accepted look absent: refused under a maximum
/// lifetime, and an identity that "never expires" otherwise.
pub(crate) fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64().filter(|f| value.is_f64() && f.is_finite())?;
    (f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

/// Appends the strings of `value` (a whitespace-separated string or an array
/// of strings) to `out`, skipping duplicates; other JSON types are ignored.
fn collect_strings(value: &Value, out: &mut Vec<String>) {
    let mut push = |s: &str| {
        if !s.is_empty() && !out.iter().any(|r| r == s) {
            out.push(s.to_owned());
        }
    };
    match value {
        Value::String(s) => s.split_ascii_whitespace().for_each(&mut push),
        Value::Array(items) => items.iter().filter_map(Value::as_str).for_each(push),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn roles_from_string_array_and_missing() {
        let src = RoleSource::default();
        assert_eq!(src.extract(&obj(json!({"role": "admin"}))), ["admin"]);
        assert_eq!(
            src.extract(&obj(json!({"roles": ["a", "b", "a", 3]}))),
            ["a", "b"]
        );
        assert!(src.extract(&obj(json!({"roles": {"x": 1}}))).is_empty());
        assert!(src.extract(&obj(json!({}))).is_empty());
    }

    #[test]
    fn scope_claim_is_split_and_scp_array_read() {
        let id = Identity::from_claims(
            obj(json!({"scope": "a  b", "scp": ["c"]})),
            &RoleSource::default(),
        );
        assert_eq!(id.scopes(), ["a", "b", "c"]);
    }

    #[test]
    fn deserialize_into_user_type() {
        #[derive(serde::Deserialize)]
        struct Mine {
            sub: String,
            tenant: u32,
        }
        let id = Identity::from_claims(
            obj(json!({"sub": "x", "tenant": 7})),
            &RoleSource::default(),
        );
        let mine: Mine = id.deserialize_claims().unwrap();
        assert_eq!((mine.sub.as_str(), mine.tenant), ("x", 7));
    }
}
