use super::JwtKey;
#[cfg(feature = "jwks")]
use super::jwks::JwksLocation;

/// One token issuer: the `iss` it signs with, the audiences accepted from
/// it, and where its keys come from.
///
/// ```
/// use tower_gateway::auth::{Issuer, JwtKey};
///
/// // Keycloak realm, keys from its JWKS (found through OIDC discovery).
/// # #[cfg(feature = "jwks")]
/// let keycloak = Issuer::new("https://sso.example.com/realms/shop")
///     .audience("orders-api")
///     .oidc_discovery();
///
/// // A static HMAC secret for an internal issuer.
/// let internal = Issuer::new("internal").key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef"));
/// ```
#[derive(Debug, Clone)]
pub struct Issuer {
    pub(crate) iss: Option<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) keys: Vec<JwtKey>,
    #[cfg(feature = "jwks")]
    pub(crate) jwks: Option<JwksLocation>,
}

impl Issuer {
    /// An issuer whose tokens must carry `iss` equal to `iss`.
    pub fn new(iss: impl Into<String>) -> Self {
        Self {
            iss: Some(iss.into()),
            ..Self::any()
        }
    }

    /// An issuer whose `iss` claim is not checked — for a single auth
    /// server whose tokens carry no `iss`. With several issuers in one
    /// layer, tokens are matched to an issuer by `iss`, and only a token
    /// whose `iss` matches no named issuer falls back to this one.
    pub fn any() -> Self {
        Self {
            iss: None,
            audiences: Vec::new(),
            keys: Vec::new(),
            #[cfg(feature = "jwks")]
            jwks: None,
        }
    }

    /// Accepts tokens whose `aud` contains `audience`. With at least one
    /// audience configured, `aud` is required; with none, it is not checked.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Adds a static key (see [`JwtKey`]); several may be live at once, so
    /// secrets rotate without downtime.
    pub fn key(mut self, key: JwtKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Fetches keys from this JWKS URL (the auth server's, e.g. Keycloak's
    /// `.../protocol/openid-connect/certs` or Auth0's `/.well-known/jwks.json`).
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks = Some(JwksLocation::Url(url.into()));
        self
    }

    /// Finds the JWKS URL through OpenID Connect discovery
    /// (`<iss>/.well-known/openid-configuration` → `jwks_uri`).
    ///
    /// Needs an issuer created with [`Issuer::new`]; on [`Issuer::any`] it
    /// does nothing.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn oidc_discovery(mut self) -> Self {
        if let Some(iss) = &self.iss {
            self.jwks = Some(JwksLocation::Discovery(iss.clone()));
        }
        self
    }
}
