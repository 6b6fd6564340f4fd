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
//! JWTs whose `kid` is the key's RFC 7638 thumbprint. Errors follow §5.2.
//! Never expose it beyond loopback.
//!
//! # Signing keys
//!
//! The signing key rotates on an interval (1 hour by default). The key that
//! signs next is published in the JWKS one whole interval before it signs,
//! so a verifier that refreshes its JWKS more often than that (the
//! gateway's default is every 5 minutes) knows it before the first token
//! it signs arrives; one that does not finds it through its unknown-`kid`
//! refetch. A retired key stays published until the last token it signed
//! has expired: the access-token lifetime after its retirement, plus
//! [`Config::retire_skew`] for verifiers' leeway and clock skew.
//!
//! # Where the state lives ([`KeySource`])
//!
//! - In memory (the default): keys and refresh tokens last as long as the
//!   process.
//! - `AUTH_KEY_FILE`: one signing key in a PEM file, so access tokens
//!   survive restarts. That file pins the key: it does not rotate, and
//!   refresh tokens are not persisted.
//! - `AUTH_STATE_FILE` with `AUTH_STATE_KEY`: the keys (the signing key,
//!   the next one, the retired ones still published) and the refresh-token
//!   state (families, used tokens, revocations) in one file encrypted with
//!   AES-256-GCM; a restart keeps every access and refresh token valid.
//!   `AUTH_STATE_KEY` is 32 bytes, as 64 hex digits or 44 characters of
//!   standard base64 (`openssl rand -base64 32`). A wrong key or a modified
//!   file stops the start with an error; nothing is reset. The format is
//!   described at [`seal`].
//!
//! `AUTH_KEY_ROTATION_SECS` sets the rotation interval (`0`: never).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

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

/// Where the signing keys and the refresh-token state live.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// Fresh keys for this process only.
    Memory,
    /// One PKCS#8 PEM key: loaded if present, else generated and written
    /// with mode 0600. It never rotates; refresh tokens stay in memory.
    File(PathBuf),
    /// Keys and refresh-token state in a file encrypted under `key`:
    /// loaded if present, else created; rewritten (atomically, mode 0600)
    /// on every change.
    Encrypted { path: PathBuf, key: StateKey },
}

/// The AES-256-GCM key of an encrypted state file. Its `Debug` shows no
/// key material.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl StateKey {
    /// 64 hex digits, or standard base64 with its padding (44 characters).
    /// Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, StateError> {
        let text = text.trim();
        let bytes = if text.len() == 64 {
            hex_decode(text)
        } else {
            STANDARD.decode(text).ok()
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(Self)
            .ok_or(StateError::BadKey)
    }

    #[allow(dead_code)]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Identifies the key in the file's header, so that a wrong key is told
    /// apart from a modified file. A hash under a label of its own: it
    /// reveals nothing about the key.
    fn check(&self) -> [u8; 8] {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"tower-gateway auth state key check\0")
            .chain_update(self.0)
            .finalize();
        let mut check = [0; 8];
        check.copy_from_slice(&digest[..8]);
        check
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// Why the encrypted state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("AUTH_STATE_KEY must be 32 bytes: 64 hex digits or 44 characters of base64")]
    BadKey,
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an auth server state file", path.display())]
    NotAStateFile { path: PathBuf },
    #[error("{}: state file version {version} is not supported (this build reads version {VERSION})", path.display())]
    Version { path: PathBuf, version: u8 },
    #[error("{} was not written under this AUTH_STATE_KEY (a wrong key, or a modified header)", path.display())]
    WrongKey { path: PathBuf },
    #[error("{} fails authentication: the file was modified or damaged", path.display())]
    Tampered { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encrypting the state failed")]
    Seal,
}

/// Where "now" comes from, in Unix seconds.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// Tokio's clock, counted from the system time when made: paused and
    /// advanced with it in tests.
    #[allow(dead_code)]
    Tokio { unix: u64, at: tokio::time::Instant },
}

impl Clock {
    #[allow(dead_code)]
    pub fn tokio() -> Self {
        Self::Tokio {
            unix: jsonwebtoken::get_current_timestamp(),
            at: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        match self {
            Self::System => jsonwebtoken::get_current_timestamp(),
            Self::Tokio { unix, at } => unix + at.elapsed().as_secs(),
        }
    }
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
    /// How often the signing key rotates; `None`: never. A
    /// [`KeySource::File`] key never rotates.
    pub key_rotation: Option<Duration>,
    /// Seconds a retired key stays published after the last token it signed
    /// has expired: verifiers' leeway (the gateway's default is 30 s) and
    /// clock skew.
    pub retire_skew: u64,
    /// The users of the `password` grant (default [`USERS`]).
    pub users: &'static [User],
    /// The registered clients (default [`CLIENTS`]).
    pub clients: &'static [Client],
    pub clock: Clock,
}

impl Config {
    /// In-memory keys rotating every hour, 5-minute access tokens, 8-hour
    /// refresh families.
    pub fn new(issuer: String) -> Self {
        Self {
            issuer,
            key: KeySource::Memory,
            access_ttl: 300,
            refresh_ttl: 8 * 3600,
            key_rotation: Some(Duration::from_secs(3600)),
            retire_skew: 60,
            users: USERS,
            clients: CLIENTS,
            clock: Clock::System,
        }
    }

    /// [`Config::new`], then the environment: `AUTH_KEY_ROTATION_SECS`,
    /// `AUTH_KEY_FILE`, or `AUTH_STATE_FILE` with `AUTH_STATE_KEY`.
    pub fn from_env(issuer: String) -> Result<Self, BoxError> {
        let mut config = Self::new(issuer);
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(secs) = var("AUTH_KEY_ROTATION_SECS") {
            let secs: u64 = secs
                .to_str()
                .and_then(|s| s.trim().parse().ok())
                .ok_or("AUTH_KEY_ROTATION_SECS: expected a whole number of seconds (0: never)")?;
            config.key_rotation = (secs > 0).then(|| Duration::from_secs(secs));
        }
        let state_key = var("AUTH_STATE_KEY")
            .map(|key| {
                key.to_str()
                    .ok_or(StateError::BadKey)
                    .and_then(StateKey::parse)
            })
            .transpose()?;
        config.key = match (var("AUTH_KEY_FILE"), var("AUTH_STATE_FILE"), state_key) {
            (Some(_), Some(_), _) => {
                return Err("AUTH_KEY_FILE and AUTH_STATE_FILE exclude each other: the state file holds the keys".into());
            }
            (None, Some(path), Some(key)) => KeySource::Encrypted {
                path: path.into(),
                key,
            },
            (_, Some(_), None) => return Err("AUTH_STATE_FILE needs AUTH_STATE_KEY".into()),
            (_, None, Some(_)) => return Err("AUTH_STATE_KEY needs AUTH_STATE_FILE".into()),
            (Some(path), None, None) => KeySource::File(path.into()),
            (None, None, None) => KeySource::Memory,
        };
        Ok(config)
    }
}

/// The server's routes: discovery, JWKS and `POST /token` (for tests).
#[allow(dead_code)]
pub fn router(config: Config) -> Result<Router, BoxError> {
    Ok(AuthServer::new(config)?.router())
}

/// An auth server: its state loaded, its key rotation running.
pub struct AuthServer {
    server: Arc<Server>,
    wake: Arc<Notify>,
}

/// Control of a running auth server (for tests: the interval rotates keys
/// otherwise).
#[derive(Clone)]
#[allow(dead_code)]
pub struct Handle {
    server: Arc<Server>,
    wake: Arc<Notify>,
}

impl AuthServer {
    /// Loads or creates the keys and state, and starts the task that
    /// rotates and retires keys (so it needs a Tokio runtime). A state file
    /// that cannot be read, decrypted or understood is an error.
    pub fn new(config: Config) -> Result<Self, BoxError> {
        tower_gateway::auth::install_crypto_backend();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the auth server needs a Tokio runtime")?;
        let rotation = match config.key {
            KeySource::File(_) => {
                if config.key_rotation.is_some() {
                    tracing::info!(
                        "the auth server's key file pins its signing key: no rotation, and refresh tokens are not persisted (AUTH_STATE_FILE and AUTH_STATE_KEY persist both)"
                    );
                }
                None
            }
            KeySource::Memory => {
                tracing::info!(
                    "the auth server's state is not persisted: its keys and refresh tokens last as long as the process (AUTH_STATE_FILE and AUTH_STATE_KEY persist them)"
                );
                config.key_rotation
            }
            KeySource::Encrypted { .. } => config.key_rotation,
        };
        let now = config.clock.now();
        let (state, store) = match &config.key {
            KeySource::Memory => (ServerState::fresh(now, rotation.is_some())?, None),
            KeySource::File(path) => {
                let key = SigningKey::from_pem(load_or_create_key(path)?, now)?;
                (ServerState::with_keys(Keyring::new(key, None)), None)
            }
            KeySource::Encrypted { path, key } => {
                let store = Arc::new(Store {
                    path: path.clone(),
                    key: key.clone(),
                    written: Mutex::new(0),
                });
                let state = match store.load()? {
                    Some(saved) => ServerState::restore(saved, &config, rotation.is_some(), now)
                        .map_err(|reason| StateError::Invalid {
                            path: path.clone(),
                            reason,
                        })?,
                    None => {
                        let mut state = ServerState::fresh(now, rotation.is_some())?;
                        state.generation = 1;
                        // Written before the first token: a store that
                        // cannot be written fails the start, not a grant.
                        store.save(1, &state.encode()?)?;
                        tracing::info!(path = %path.display(), "auth server state file created");
                        state
                    }
                };
                (state, Some(store))
            }
        };
        let server = Arc::new(Server {
            config,
            rotation,
            state: Mutex::new(state),
            store,
        });
        let wake = Arc::new(Notify::new());
        runtime.spawn(maintain(Arc::downgrade(&server), wake.clone()));
        Ok(Self { server, wake })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            server: self.server.clone(),
            wake: self.wake.clone(),
        }
    }

    pub fn router(&self) -> Router {
        let issuer = &self.server.config.issuer;
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "token_endpoint": format!("{issuer}/token"),
            "grant_types_supported": ["password", "client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let discovery = discovery.clone();
                    async move { Json(discovery) }
                }),
            )
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .with_state(self.server.clone())
    }
}

#[allow(dead_code)]
impl Handle {
    /// Rotates the signing key now, as the interval does, and saves the
    /// state.
    pub async fn rotate_now(&self) -> Result<(), BoxError> {
        if matches!(self.server.config.key, KeySource::File(_)) {
            return Err("a key file pins the signing key".into());
        }
        let now = self.server.now();
        {
            let mut state = self.server.lock();
            let until = self.server.retire_until(now);
            state.keys.rotate(now, until)?;
            state.generation += 1;
        }
        self.wake.notify_one();
        self.server.persist().await?;
        Ok(())
    }

    /// The `kid` of the key that signs now.
    pub fn signing_kid(&self) -> String {
        self.server.lock().keys.current.kid.clone()
    }

    /// The `kid` of the key that signs after the next rotation.
    pub fn next_kid(&self) -> Option<String> {
        self.server.lock().keys.next.as_ref().map(|k| k.kid.clone())
    }
}

/// Rotates the signing key when due, forgets retired keys whose tokens have
/// expired, and saves what changed. Ends when the server is dropped.
async fn maintain(server: Weak<Server>, wake: Arc<Notify>) {
    loop {
        let delay = {
            let Some(server) = server.upgrade() else {
                return;
            };
            let delay = server.tick();
            if let Err(error) = server.persist().await {
                tracing::error!(%error, "auth server state not saved");
            }
            delay
        };
        match delay {
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

async fn jwks(State(server): State<Arc<Server>>) -> Json<Value> {
    let now = server.now();
    Json(server.lock().keys.jwks(now))
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

/// A key that signs, or will.
struct SigningKey {
    pem: String,
    key: EncodingKey,
    jwk: Jwk,
    kid: String,
    /// When it started signing (or, for the next key, was published).
    since: u64,
}

impl SigningKey {
    fn from_pem(pem: String, since: u64) -> Result<Self, BoxError> {
        let key = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
        jwk.common.key_id = Some(kid.clone());
        Ok(Self {
            pem,
            key,
            jwk,
            kid,
            since,
        })
    }

    fn generate(since: u64) -> Result<Self, BoxError> {
        Self::from_pem(generate_pem()?, since)
    }
}

/// A key that signs no more, published until `until`.
struct Retired {
    jwk: Jwk,
    until: u64,
}

/// The signing key, the one that signs after the next rotation (published
/// ahead of use), and the retired keys still published.
struct Keyring {
    current: SigningKey,
    next: Option<SigningKey>,
    retired: Vec<Retired>,
}

impl Keyring {
    fn new(current: SigningKey, next: Option<SigningKey>) -> Self {
        Self {
            current,
            next,
            retired: Vec::new(),
        }
    }

    fn jwks(&self, now: u64) -> Value {
        let keys: Vec<&Jwk> = std::iter::once(&self.current.jwk)
            .chain(self.next.as_ref().map(|k| &k.jwk))
            .chain(
                self.retired
                    .iter()
                    .filter(|r| r.until > now)
                    .map(|r| &r.jwk),
            )
            .collect();
        json!({ "keys": keys })
    }

    /// The next key signs from now on; a new one is published in its
    /// place; the old one stays published until `until`.
    fn rotate(&mut self, now: u64, until: u64) -> Result<(), BoxError> {
        // Made before anything changes: a failure leaves the ring as it was.
        let fresh = SigningKey::generate(now)?;
        let mut promoted = match self.next.replace(fresh) {
            Some(next) => next,
            None => SigningKey::generate(now)?,
        };
        promoted.since = now;
        let old = std::mem::replace(&mut self.current, promoted);
        tracing::info!(old = %old.kid, new = %self.current.kid, until, "signing key rotated");
        self.retired.push(Retired {
            jwk: old.jwk,
            until,
        });
        Ok(())
    }
}

struct Server {
    config: Config,
    /// The rotation interval in force (none for a key file).
    rotation: Option<Duration>,
    state: Mutex<ServerState>,
    store: Option<Arc<Store>>,
}

/// Everything that changes: keys and refresh tokens. `generation` counts
/// changes, so that a save knows whether a newer one is already on disk.
struct ServerState {
    keys: Keyring,
    refresh: RefreshStore,
    generation: u64,
}

/// Refresh tokens, by their SHA-256: a token is used at most once; each use
/// issues its successor in the same family. A revoked family's tokens are
/// deleted: presenting one is then as invalid as presenting a random string.
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

impl Server {
    fn now(&self) -> u64 {
        self.config.clock.now()
    }

    fn lock(&self) -> MutexGuard<'_, ServerState> {
        // The state stays consistent across a panic elsewhere: each change
        // is made whole under the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when a key retired now stays published: the last token it
    /// signed expires at most one access-token lifetime from now.
    fn retire_until(&self, now: u64) -> u64 {
        now.saturating_add(self.config.access_ttl)
            .saturating_add(self.config.retire_skew)
    }

    /// Rotates if due and drops expired retired keys; returns how long
    /// until something is due again.
    fn tick(&self) -> Option<Duration> {
        let now = self.now();
        let mut state = self.lock();
        let mut changed = false;
        let mut failed = false;
        let due = self
            .rotation
            .is_some_and(|i| state.keys.current.since.saturating_add(i.as_secs()) <= now);
        if due {
            match state.keys.rotate(now, self.retire_until(now)) {
                Ok(()) => changed = true,
                Err(error) => {
                    tracing::error!(%error, "signing key rotation failed");
                    failed = true;
                }
            }
        }
        let before = state.keys.retired.len();
        state.keys.retired.retain(|r| r.until > now);
        if state.keys.retired.len() != before {
            tracing::info!(
                removed = before - state.keys.retired.len(),
                "retired signing keys unpublished: their tokens have expired"
            );
            changed = true;
        }
        if changed {
            state.generation += 1;
        }
        if failed {
            return Some(Duration::from_secs(60));
        }
        let rotation = self
            .rotation
            .map(|i| state.keys.current.since.saturating_add(i.as_secs()));
        let expiry = state.keys.retired.iter().map(|r| r.until).min();
        let due = rotation.into_iter().chain(expiry).min()?;
        Some(Duration::from_secs(due.saturating_sub(now).max(1)))
    }

    /// Saves the state if it changed since the last save, off the runtime's
    /// threads.
    async fn persist(&self) -> Result<(), StateError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (generation, plaintext) = {
            let state = self.lock();
            if state.generation <= store.written() {
                return Ok(());
            }
            (state.generation, state.encode()?)
        };
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.save(generation, &plaintext))
            .await
            .map_err(|e| StateError::Write {
                path: self
                    .store
                    .as_ref()
                    .map(|s| s.path.clone())
                    .unwrap_or_default(),
                source: std::io::Error::other(e),
            })?
    }
}

// ---------------------------------------------------------------------------
// The state file.

const MAGIC: &[u8; 8] = b"tgw-auth";
const VERSION: u8 = 1;
const CHECK_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + 1 + CHECK_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Encrypts the state for the file, format version 1:
///
/// ```text
/// "tgw-auth" | version (1 byte) | key check (8) | nonce (12) | AES-256-GCM ciphertext and tag
/// ```
///
/// The header is the AEAD's associated data, so none of it can be changed
/// unnoticed. The nonce is random (96 bits) for each write. The key check
/// is the first 8 bytes of SHA-256 over a label and the key: it tells a
/// wrong key from a modified file. The plaintext is the JSON of [`Saved`].
fn seal(key: &StateKey, plaintext: &[u8]) -> Result<Vec<u8>, StateError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key.check());
    out.extend_from_slice(&nonce);
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| StateError::Seal)?;
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &out,
            },
        )
        .map_err(|_| StateError::Seal)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Checks and decrypts what [`seal`] wrote.
fn unseal(path: &Path, key: &StateKey, bytes: &[u8]) -> Result<Vec<u8>, StateError> {
    let path = || path.to_owned();
    if bytes.len() < MAGIC.len() + 1 || !bytes.starts_with(MAGIC) {
        return Err(StateError::NotAStateFile { path: path() });
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(StateError::Version {
            path: path(),
            version,
        });
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(StateError::Tampered { path: path() });
    }
    let (header, sealed) = bytes.split_at(HEADER_LEN);
    let check = &header[MAGIC.len() + 1..MAGIC.len() + 1 + CHECK_LEN];
    if check != key.check() {
        return Err(StateError::WrongKey { path: path() });
    }
    let nonce: [u8; NONCE_LEN] = header[HEADER_LEN - NONCE_LEN..]
        .try_into()
        .map_err(|_| StateError::Tampered { path: path() })?;
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| StateError::Seal)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: header,
            },
        )
        .map_err(|_| StateError::Tampered { path: path() })
}

/// The encrypted state file.
struct Store {
    path: PathBuf,
    key: StateKey,
    /// The generation on disk.
    written: Mutex<u64>,
}

impl Store {
    fn written(&self) -> u64 {
        *self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The saved state; `None` if there is no file yet.
    fn load(&self) -> Result<Option<Saved>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let plaintext = unseal(&self.path, &self.key, &bytes)?;
        serde_json::from_slice(&plaintext)
            .map(Some)
            .map_err(|e| StateError::Invalid {
                path: self.path.clone(),
                reason: format!("unreadable state: {e}"),
            })
    }

    /// Writes `plaintext` (the state at `generation`) unless a later
    /// generation is already on disk. Saves are serialized.
    fn save(&self, generation: u64, plaintext: &[u8]) -> Result<(), StateError> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if generation <= *written {
            return Ok(());
        }
        let sealed = seal(&self.key, plaintext)?;
        write_atomically(&self.path, &sealed).map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })?;
        *written = generation;
        Ok(())
    }
}

/// Writes a temporary file (mode 0600) next to `path`, syncs it and renames
/// it over `path`: a reader, or a crash, sees the old file or the new one,
/// never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path names no file"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let temp = dir.join(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&temp).and_then(|mut file| {
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    // The rename itself is durable once the directory is synced.
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The state file's plaintext.
#[derive(Serialize, Deserialize)]
struct Saved {
    keys: SavedKeys,
    refresh: SavedRefresh,
}

#[derive(Serialize, Deserialize)]
struct SavedKeys {
    current: SavedKey,
    next: Option<SavedKey>,
    retired: Vec<SavedRetired>,
}

#[derive(Serialize, Deserialize)]
struct SavedKey {
    /// PKCS#8 PEM.
    pem: String,
    since: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedRetired {
    /// The public key only: it signs no more.
    jwk: Jwk,
    until: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedRefresh {
    next_family: u64,
    tokens: Vec<SavedToken>,
}

#[derive(Serialize, Deserialize)]
struct SavedToken {
    /// SHA-256 of the token, hex: the token itself is never stored.
    digest: String,
    family: u64,
    client: String,
    subject: String,
    roles: Vec<String>,
    expires_at: u64,
    used: bool,
}

impl ServerState {
    fn with_keys(keys: Keyring) -> Self {
        Self {
            keys,
            refresh: RefreshStore::default(),
            generation: 0,
        }
    }

    fn fresh(now: u64, rotates: bool) -> Result<Self, BoxError> {
        let next = rotates.then(|| SigningKey::generate(now)).transpose()?;
        Ok(Self::with_keys(Keyring::new(
            SigningKey::generate(now)?,
            next,
        )))
    }

    fn encode(&self) -> Result<Vec<u8>, StateError> {
        let saved = Saved {
            keys: SavedKeys {
                current: SavedKey {
                    pem: self.keys.current.pem.clone(),
                    since: self.keys.current.since,
                },
                next: self.keys.next.as_ref().map(|k| SavedKey {
                    pem: k.pem.clone(),
                    since: k.since,
                }),
                retired: self
                    .keys
                    .retired
                    .iter()
                    .map(|r| SavedRetired {
                        jwk: r.jwk.clone(),
                        until: r.until,
                    })
                    .collect(),
            },
            refresh: SavedRefresh {
                next_family: self.refresh.next_family,
                tokens: self
                    .refresh
                    .tokens
                    .iter()
                    .map(|(digest, t)| SavedToken {
                        digest: hex_encode(digest),
                        family: t.family,
                        client: t.client.to_owned(),
                        subject: t.subject.clone(),
                        roles: t.roles.clone(),
                        expires_at: t.expires_at,
                        used: t.used,
                    })
                    .collect(),
            },
        };
        serde_json::to_vec(&saved).map_err(|e| StateError::Invalid {
            path: PathBuf::new(),
            reason: format!("encoding the state: {e}"),
        })
    }

    /// The state of a file, less what has expired since it was written.
    fn restore(saved: Saved, config: &Config, rotates: bool, now: u64) -> Result<Self, String> {
        let key = |saved: SavedKey| {
            SigningKey::from_pem(saved.pem, saved.since).map_err(|e| format!("a signing key: {e}"))
        };
        let current = key(saved.keys.current)?;
        let mut next = saved.keys.next.map(key).transpose()?;
        let mut changed = false;
        if rotates && next.is_none() {
            next = Some(SigningKey::generate(now).map_err(|e| e.to_string())?);
            changed = true;
        }
        let mut keys = Keyring::new(current, next);
        keys.retired = saved
            .keys
            .retired
            .into_iter()
            .filter(|r| r.until > now)
            .map(|r| Retired {
                jwk: r.jwk,
                until: r.until,
            })
            .collect();
        let mut refresh = RefreshStore {
            tokens: HashMap::new(),
            next_family: saved.refresh.next_family,
        };
        let mut dropped = 0usize;
        for token in saved.refresh.tokens {
            let digest = hex_decode(&token.digest)
                .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                .ok_or("a refresh token digest is not 64 hex digits")?;
            // A client removed from the configuration takes its tokens
            // with it.
            let Some(client) = config.clients.iter().find(|c| c.id == token.client) else {
                dropped += 1;
                continue;
            };
            if token.expires_at <= now {
                continue;
            }
            refresh.tokens.insert(
                digest,
                Refresh {
                    family: token.family,
                    client: client.id,
                    subject: token.subject,
                    roles: token.roles,
                    expires_at: token.expires_at,
                    used: token.used,
                },
            );
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "refresh tokens of clients no longer configured were dropped"
            );
        }
        tracing::info!(
            kid = %keys.current.kid,
            retired = keys.retired.len(),
            refresh_tokens = refresh.tokens.len(),
            "auth server state restored"
        );
        Ok(Self {
            keys,
            refresh,
            generation: u64::from(changed),
        })
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
    let result = server.grant(&headers, form);
    // A grant that changed the refresh-token state (a new family, a
    // rotation, a revocation) answers once that state is saved: a restart
    // must forget neither a refresh token the client holds nor a
    // revocation.
    if let Err(error) = server.persist().await {
        tracing::error!(%error, "auth server state not saved");
        if result.is_ok() {
            return TokenError::new("server_error", "the grant could not be recorded")
                .into_response();
        }
    }
    match result {
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
        let now = self.now();
        let ttl = self.config.access_ttl;
        let scope = roles.join(" ");
        let claims = json!({
            "iss": self.config.issuer, "aud": AUDIENCE, "sub": subject,
            "roles": roles, "scope": scope, "iat": now, "exp": now + ttl,
            "jti": random_token(),
        });
        let (key, kid) = {
            let state = self.lock();
            let current = &state.keys.current;
            (current.key.clone(), current.kid.clone())
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        let access = jsonwebtoken::encode(&header, &claims, &key)
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
        let now = self.now();
        let mut state = self.lock();
        state.generation += 1;
        let store = &mut state.refresh;
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
        let now = self.now();
        let mut state = self.lock();
        let ServerState {
            refresh: store,
            generation,
            ..
        } = &mut *state;
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
            *generation += 1;
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
        *generation += 1;
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
