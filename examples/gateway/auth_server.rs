//! A development OAuth 2.0 authorization server, a small Keycloak: OIDC
//! discovery, a JWKS, and a form-encoded `POST /token` (RFC 6749) with three
//! grants over a fixed set of demo clients and users.
//!
//! - `password` (§4.3): a demo user's name and password, for a registered
//!   client (the public `demo-cli` sends only its `client_id`).
//! - `client_credentials` (§4.4): a confidential client authenticates with
//!   HTTP Basic or the `client_id`/`client_secret` form fields (§2.3.1).
//! - `refresh_token` (§6): refresh tokens are opaque random strings that
//!   rotate on every use; replaying a used one revokes its whole family
//!   (§10.4, OAuth 2.0 Security BCP §4.14).
//!
//! `scope` is the space-separated roles wanted: it may narrow the user's or
//! client's roles, never widen them. Access tokens are short-lived ES256
//! JWTs whose `kid` is the key's RFC 7638 thumbprint; the key lives in
//! memory, or in a PEM file (`AUTH_KEY_FILE`) that survives restarts.
//! Errors follow §5.2. Never expose it beyond loopback.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Form, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, ThumbprintHash},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The audience of every token (the gateway and the services).
pub const AUDIENCE: &str = "shop";

/// A demo user for the `password` grant.
#[derive(Debug)]
pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    pub roles: &'static [&'static str],
}

/// The demo users: their names are the tokens' subjects.
pub const USERS: &[User] = &[
    User {
        name: "alice",
        password: "alice-password",
        roles: &["user"],
    },
    User {
        name: "bob",
        password: "bob-password",
        roles: &["user"],
    },
    User {
        name: "root",
        password: "root-password",
        roles: &["admin"],
    },
    User {
        name: "eve",
        password: "eve-password",
        roles: &[],
    },
];

/// A registered client. A public client has no secret and identifies itself
/// with `client_id` alone.
#[derive(Debug)]
pub struct Client {
    pub id: &'static str,
    pub secret: Option<&'static str>,
    pub grants: &'static [&'static str],
    /// The roles of the client's own tokens (`client_credentials`).
    pub roles: &'static [&'static str],
}

/// The demo clients.
pub const CLIENTS: &[Client] = &[
    Client {
        id: "demo-cli",
        secret: None,
        grants: &["password", "refresh_token"],
        roles: &[],
    },
    Client {
        id: "inventory-sync",
        secret: Some("inventory-sync-secret"),
        grants: &["client_credentials"],
        roles: &["user"],
    },
    Client {
        id: "ops-console",
        secret: Some("ops-console-secret"),
        grants: &["password", "refresh_token", "client_credentials"],
        roles: &["admin"],
    },
];

/// Where the signing key lives.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A fresh key for this process only (tests).
    Memory,
    /// A PKCS#8 PEM file: loaded if present, else generated and written
    /// with mode 0600.
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub issuer: String,
    pub key: KeySource,
    /// Access-token lifetime, in seconds.
    pub access_ttl: u64,
    /// Refresh-token lifetime, in seconds (the family's, not renewed by
    /// rotation).
    pub refresh_ttl: u64,
    /// The users of the `password` grant (default [`USERS`]).
    pub users: &'static [User],
    /// The registered clients (default [`CLIENTS`]).
    pub clients: &'static [Client],
}

impl Config {
    /// An in-memory key, 5-minute access tokens, 8-hour refresh families.
    pub fn new(issuer: String) -> Self {
        Self {
            issuer,
            key: KeySource::Memory,
            access_ttl: 300,
            refresh_ttl: 8 * 3600,
            users: USERS,
            clients: CLIENTS,
        }
    }
}

/// Serves with [`Config::new`], the key in `AUTH_KEY_FILE` if that is set.
pub async fn serve(listener: TcpListener, issuer: String) -> Result<(), BoxError> {
    let mut config = Config::new(issuer);
    if let Some(path) = std::env::var_os("AUTH_KEY_FILE") {
        config.key = KeySource::File(path.into());
    }
    serve_with(listener, config).await
}

pub async fn serve_with(listener: TcpListener, config: Config) -> Result<(), BoxError> {
    axum::serve(listener, router(config)?).await?;
    Ok(())
}

/// The server's routes: discovery, JWKS and `POST /token`.
pub fn router(config: Config) -> Result<Router, BoxError> {
    tower_gateway::auth::install_crypto_backend();
    let pem = match &config.key {
        KeySource::Memory => generate_pem()?,
        KeySource::File(path) => load_or_create_key(path)?,
    };
    let key = EncodingKey::from_ec_pem(pem.as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
    jwk.common.key_id = Some(kid.clone());
    let issuer = config.issuer.clone();
    let jwks = json!({ "keys": [jwk] });
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "token_endpoint": format!("{issuer}/token"),
        "grant_types_supported": ["password", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    let state = Arc::new(Server {
        config,
        key,
        kid,
        refresh: Mutex::default(),
    });
    let doc = |value: Value| {
        move || {
            let value = value.clone();
            async move { Json(value) }
        }
    };
    Ok(Router::new()
        .route("/.well-known/openid-configuration", get(doc(discovery)))
        .route("/jwks", get(doc(jwks)))
        .route("/token", post(token))
        .with_state(state))
}

fn generate_pem() -> Result<String, BoxError> {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    Ok(secret.to_pkcs8_pem(Default::default())?.to_string())
}

fn load_or_create_key(path: &Path) -> Result<String, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => return Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
    }
    let pem = generate_pem()?;
    let mut options = std::fs::OpenOptions::new();
    // `create_new`: two servers starting at once never overwrite each
    // other's key.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, pem.as_bytes())?;
            file.sync_all()?;
            Ok(pem)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?)
        }
        Err(e) => Err(format!("writing {}: {e}", path.display()).into()),
    }
}

struct Server {
    config: Config,
    key: EncodingKey,
    kid: String,
    refresh: Mutex<RefreshStore>,
}

/// Refresh tokens, by their SHA-256: a token is used at most once; each use
/// issues its successor in the same family.
#[derive(Default)]
struct RefreshStore {
    tokens: HashMap<[u8; 32], Refresh>,
    next_family: u64,
}

struct Refresh {
    family: u64,
    client: &'static str,
    subject: String,
    roles: Vec<String>,
    expires_at: u64,
    used: bool,
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
struct TokenError {
    code: &'static str,
    description: String,
    /// `invalid_client` after HTTP Basic: 401 and a challenge.
    basic_challenge: bool,
}

impl TokenError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let status = if self.basic_challenge {
            StatusCode::UNAUTHORIZED
        } else if self.code == "server_error" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = no_store((status, Json(body)).into_response());
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="token", charset="UTF-8""#),
            );
        }
        response
    }
}

/// RFC 6749 §5.1: token responses are never cached.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn token(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    match server.grant(&headers, form) {
        Ok(body) => no_store(Json(body).into_response()),
        Err(e) => e.into_response(),
    }
}

impl Server {
    fn grant(
        &self,
        headers: &HeaderMap,
        form: Result<Form<Vec<(String, String)>>, FormRejection>,
    ) -> Result<Value, TokenError> {
        let Form(pairs) = form.map_err(|e| {
            TokenError::new(
                "invalid_request",
                format!("expected an application/x-www-form-urlencoded body: {e}"),
            )
        })?;
        let mut params = HashMap::new();
        for (name, value) in pairs {
            // §3.2: parameters must not repeat.
            if params.insert(name.clone(), value).is_some() {
                return Err(TokenError::new(
                    "invalid_request",
                    format!("parameter {name} is repeated"),
                ));
            }
        }
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let grant = param("grant_type")
            .ok_or_else(|| TokenError::new("invalid_request", "missing grant_type"))?;
        if !matches!(grant, "password" | "client_credentials" | "refresh_token") {
            return Err(TokenError::new(
                "unsupported_grant_type",
                format!("grant_type {grant} is not supported"),
            ));
        }
        let client = authenticate_client(
            self.config.clients,
            headers,
            param("client_id"),
            param("client_secret"),
        )?;
        if !client.grants.contains(&grant) {
            return Err(TokenError::new(
                "unauthorized_client",
                format!("client {} may not use the {grant} grant", client.id),
            ));
        }
        let scope = param("scope");
        match grant {
            "password" => {
                let name = param("username")
                    .ok_or_else(|| TokenError::new("invalid_request", "missing username"))?;
                let password = param("password")
                    .ok_or_else(|| TokenError::new("invalid_request", "missing password"))?;
                let user = self
                    .config
                    .users
                    .iter()
                    .find(|u| u.name == name && constant_time_eq(u.password, password))
                    .ok_or_else(|| {
                        TokenError::new("invalid_grant", "unknown user or wrong password")
                    })?;
                let roles = narrow(user.roles.iter().copied(), scope)?;
                let refresh = self.new_family(client, user.name, &roles);
                self.issue(user.name, roles, Some(refresh))
            }
            "client_credentials" => {
                if client.secret.is_none() {
                    return Err(TokenError::new(
                        "unauthorized_client",
                        "a public client has no credentials",
                    ));
                }
                let roles = narrow(client.roles.iter().copied(), scope)?;
                // §4.4.3: no refresh token for client credentials.
                self.issue(client.id, roles, None)
            }
            _ => {
                let presented = param("refresh_token")
                    .ok_or_else(|| TokenError::new("invalid_request", "missing refresh_token"))?;
                let (subject, roles, refresh) = self.rotate(client, presented, scope)?;
                self.issue(&subject, roles, Some(refresh))
            }
        }
    }

    fn issue(
        &self,
        subject: &str,
        roles: Vec<String>,
        refresh: Option<String>,
    ) -> Result<Value, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = self.config.access_ttl;
        let scope = roles.join(" ");
        let claims = json!({
            "iss": self.config.issuer, "aud": AUDIENCE, "sub": subject,
            "roles": roles, "scope": scope, "iat": now, "exp": now + ttl,
            "jti": random_token(),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let access = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::new("server_error", format!("signing: {e}")))?;
        let mut body = json!({
            "access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": scope,
        });
        if let Some(refresh) = refresh {
            body["refresh_token"] = refresh.into();
            body["refresh_expires_in"] = self.config.refresh_ttl.into();
        }
        Ok(body)
    }

    fn new_family(&self, client: &'static Client, subject: &str, roles: &[String]) -> String {
        let mut store = self.refresh.lock().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        // Forget what can no longer be presented.
        store.tokens.retain(|_, t| t.expires_at > now);
        let family = store.next_family;
        store.next_family += 1;
        let token = random_token();
        store.tokens.insert(
            digest(&token),
            Refresh {
                family,
                client: client.id,
                subject: subject.to_owned(),
                roles: roles.to_vec(),
                expires_at: now + self.config.refresh_ttl,
                used: false,
            },
        );
        token
    }

    /// Uses `presented` once and issues its successor; a replay revokes
    /// the family.
    fn rotate(
        &self,
        client: &'static Client,
        presented: &str,
        scope: Option<&str>,
    ) -> Result<(String, Vec<String>, String), TokenError> {
        let invalid = || {
            TokenError::new(
                "invalid_grant",
                "refresh token is invalid, expired or revoked",
            )
        };
        let mut store = self.refresh.lock().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let old = store
            .tokens
            .get_mut(&digest(presented))
            .ok_or_else(invalid)?;
        if old.client != client.id || old.expires_at <= now {
            return Err(invalid());
        }
        if old.used {
            // Someone holds a copy: the thief or the client. Revoke every
            // token of the family, the successor both may hold included.
            let family = old.family;
            store.tokens.retain(|_, t| t.family != family);
            tracing::warn!(
                client = client.id,
                family,
                "refresh token replayed: family revoked"
            );
            return Err(invalid());
        }
        // §6: the new scope may narrow, never widen, the original one.
        let roles = narrow(old.roles.iter().map(String::as_str), scope)?;
        old.used = true;
        let successor = Refresh {
            family: old.family,
            client: old.client,
            subject: old.subject.clone(),
            roles: old.roles.clone(),
            expires_at: old.expires_at,
            used: false,
        };
        let subject = successor.subject.clone();
        let token = random_token();
        store.tokens.insert(digest(&token), successor);
        Ok((subject, roles, token))
    }
}

/// The client, authenticated by HTTP Basic or the form (never both, §2.3),
/// or identified by `client_id` alone when public.
fn authenticate_client(
    clients: &'static [Client],
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<&'static Client, TokenError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(parse_basic(value).ok_or_else(|| TokenError {
            code: "invalid_client",
            description: "malformed Basic credentials".into(),
            basic_challenge: true,
        })?),
        None => None,
    };
    let used_basic = basic.is_some();
    let (id, secret) = match basic {
        Some(_) if form_secret.is_some() => {
            return Err(TokenError::new(
                "invalid_request",
                "more than one client authentication method",
            ));
        }
        Some((id, secret)) => {
            if form_id.is_some_and(|f| f != id) {
                return Err(TokenError::new(
                    "invalid_request",
                    "client_id differs from Basic",
                ));
            }
            // A public client may send Basic with an empty secret.
            (id, Some(secret).filter(|s| !s.is_empty()))
        }
        None => (
            form_id
                .ok_or_else(|| TokenError::new("invalid_client", "no client identified"))?
                .to_owned(),
            form_secret.map(str::to_owned),
        ),
    };
    let fail = || TokenError {
        code: "invalid_client",
        description: "client authentication failed".into(),
        basic_challenge: used_basic,
    };
    let client = clients.iter().find(|c| c.id == id).ok_or_else(fail)?;
    match (client.secret, secret.as_deref()) {
        (Some(expected), Some(given)) if constant_time_eq(expected, given) => Ok(client),
        (None, None) => Ok(client),
        _ => Err(fail()),
    }
}

/// RFC 6749 §2.3.1: `base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// The roles `scope` asks for, which must all be granted; every granted role
/// when there is no scope.
fn narrow<'a>(
    granted: impl Iterator<Item = &'a str>,
    scope: Option<&str>,
) -> Result<Vec<String>, TokenError> {
    let granted: BTreeSet<&str> = granted.collect();
    let Some(scope) = scope else {
        return Ok(granted.into_iter().map(str::to_owned).collect());
    };
    let wanted: BTreeSet<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(extra) = wanted.difference(&granted).next() {
        return Err(TokenError::new(
            "invalid_scope",
            format!("scope {extra} is not granted"),
        ));
    }
    Ok(wanted.into_iter().map(str::to_owned).collect())
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
