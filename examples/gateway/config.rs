//! The reference gateway's config file: its model, how it is read, and how
//! it is checked (see `CONFIG.md` next to this file for every option).
//!
//! The file is parsed into a `toml::Table` first and then walked section by
//! section, so that a wrong type in one place never hides the mistakes in
//! others: [`load`] returns every problem at once, each under the path of
//! the field it concerns (`routes[2].limits[0].per_second`). Unknown
//! fields are refused with the closest known name as a suggestion.
//!
//! Strings may refer to the environment (`${NAME}`, or `${NAME:-default}`),
//! and every secret has a `*_file` twin (`token_file`, `secret_file`, ...)
//! whose file's content, trimmed, is the value — so no secret need be in
//! the file. Relative paths are relative to the config file's directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http::Method;
use toml::{Table, Value};
use tower_gateway::server::Limits;

/// One problem in a config file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's path: `routes[2].limits[0].per_second`; empty for the
    /// file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }

    /// The paths reported, in order (for tests).
    #[allow(dead_code)]
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A secret read from the file, the environment or a `*_file`. Its
/// `Debug` shows a digest, never the value, so that settings can be logged
/// and compared (a changed secret is a changed setting).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        write!(f, "Secret(sha256:")?;
        for b in &digest[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

// ---------------------------------------------------------------------------
// The model.

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listeners: Listeners,
    pub server: Limits,
    pub auth: Option<AuthConfig>,
    pub rbac: RbacConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub ratelimit: RateLimitConfig,
    pub discovery: DiscoveryConfig,
    pub metrics: MetricsSettings,
    pub tracing: TracingSettings,
    pub demo: Option<DemoConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listeners {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<ListenerTls>,
}

/// TLS on the public listener: mutual TLS with `client_ca_file`, plain
/// server TLS without.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: whether every client must present a certificate
    /// (`true`, mutual TLS) or may (a presented one is verified, its
    /// identity reaches the routes; none is anonymous).
    pub client_certificates_required: bool,
    pub reload_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub issuers: Vec<IssuerConfig>,
    pub leeway: Duration,
    pub max_lifetime: Option<Duration>,
    pub role_claims: Vec<String>,
    pub forward_subject: Option<String>,
    pub forward_roles: Option<String>,
    pub failures_per_minute: u32,
    /// How often key sets are fetched again (JWKS, OIDC discovery).
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches, however many tokens name an
    /// unknown `kid`.
    pub jwks_min_refetch_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// `None`: any `iss` (`issuer = "*"`).
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub oidc_discovery: bool,
    pub jwks_url: Option<String>,
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyMaterial {
    Hmac(Secret),
    Rsa(PathBuf),
    Ec(PathBuf),
    Ed(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    pub material: KeyMaterial,
    pub kid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RbacConfig {
    /// Role → the roles it implies.
    pub hierarchy: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub discovery: UpstreamDiscovery,
    pub tls: Option<UpstreamTls>,
    pub balancer: BalancerChoice,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: usize,
    pub circuit: Option<CircuitSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamDiscovery {
    /// `host:port` of each instance.
    Static(Vec<(String, u16)>),
    Consul {
        service: String,
        tags: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamTls {
    /// The certificates the example generates for its demo services.
    Demo,
    Files {
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
        server_name: Option<String>,
        http2: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerChoice {
    LeastRequest,
    RoundRobin,
    PeakEwma,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSettings {
    pub failure_rate: f64,
    pub minimum_calls: u32,
    pub consecutive_failures: Option<u32>,
    pub window: Duration,
    pub window_calls: Option<u32>,
    pub open_duration: Duration,
    pub max_open_duration: Duration,
    pub half_open_probes: u32,
    pub max_ejected_fraction: f64,
}

impl Default for CircuitSettings {
    /// The crate's `CircuitConfig::default()`, at most half the endpoints
    /// ejected.
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            minimum_calls: 10,
            consecutive_failures: Some(5),
            window: Duration::from_secs(10),
            window_calls: None,
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(120),
            half_open_probes: 3,
            max_ejected_fraction: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChoice {
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: Option<String>,
    pub path: String,
    pub exact: bool,
    pub host: Option<String>,
    pub methods: Vec<Method>,
    pub upstream: String,
    pub auth: AuthChoice,
    pub rules: Vec<RuleConfig>,
    pub limits: Vec<LimitRef>,
    pub timeout: Option<Duration>,
    pub retries: Option<usize>,
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// Empty: every method.
    pub methods: Vec<Method>,
    pub who: Who,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Public,
    Authenticated,
    AnyOf(Vec<String>),
    AllOf(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum LimitRef {
    /// A limit of `ratelimit.limits`, shared by every route naming it.
    Named(String),
    /// A limit of this route alone, under the scope given (default
    /// `<route template>#<index>`).
    Inline(LimitSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    /// Key kinds, the first that finds a key wins.
    pub key: Vec<KeyKind>,
    pub windows: Windows,
    pub tiers: Vec<(String, Windows)>,
    pub scope: String,
    pub on_missing_key: MissingKeyChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Windows {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The token's subject.
    Consumer,
    /// A claim, by dotted path.
    Claim(String),
    /// The client IP (the TCP peer).
    Ip,
    /// A request header.
    Header(String),
    /// The matched route's template.
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKeyChoice {
    Reject,
    Allow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    pub on_backend_error: FailureChoice,
    pub fallback_share: f64,
    /// Requests per second of one client IP before authentication (0: off).
    pub per_ip_second: u32,
    pub limits: BTreeMap<String, LimitSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateLimitBackend {
    Local,
    Redis {
        url: Secret,
        timeout: Duration,
        prefix: String,
    },
    Cluster {
        nodes: Vec<Secret>,
        timeout: Duration,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureChoice {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiscoveryConfig {
    pub consul: Option<ConsulConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    pub address: String,
    pub token: Option<Secret>,
    pub datacenter: Option<String>,
    pub tls: Option<ConsulTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsulTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsSettings {
    /// Per-consumer series (token subjects as labels): off by default.
    pub consumers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    pub sample_ratio: f64,
}

/// The development environment the example starts next to the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Where the Order, Payment and Inventory services listen (mTLS).
    pub services: Vec<(String, SocketAddr)>,
    /// The services' own metrics on this port and the next two.
    pub service_metrics_port: Option<u16>,
    pub auth_server: Option<DemoAuthServer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoAuthServer {
    pub listen: SocketAddr,
    pub key_file: Option<PathBuf>,
    /// The encrypted state file (keys and refresh tokens), with its key.
    pub state_file: Option<PathBuf>,
    pub state_key: Option<Secret>,
    /// `None`: the signing key never rotates.
    pub key_rotation: Option<Duration>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// `None`: the built-in demo users.
    pub users: Option<Vec<DemoUser>>,
    /// `None`: the built-in demo clients.
    pub clients: Option<Vec<DemoClient>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoUser {
    pub name: String,
    pub password: Secret,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoClient {
    pub id: String,
    pub secret: Option<Secret>,
    pub grants: Vec<String>,
    pub roles: Vec<String>,
}

/// The demo services the example can start.
pub const DEMO_SERVICES: &[&str] = &["orders", "payments", "inventory"];

// ---------------------------------------------------------------------------
// Loading.

/// Where `${NAME}` references are looked up: the process environment, or
/// a map in tests (which must not change the process environment).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A config file read from disk: its model and the digest of its bytes
/// (the version `/config` reports).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: GatewayConfig,
    pub version: String,
}

/// The SHA-256 of a file's bytes, in hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads, parses and checks the file at `path`.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Loaded, ConfigErrors> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes.clone())
        .map_err(|_| ConfigErrors::one("", format!("{} is not UTF-8", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = parse(&text, &base, env)?;
    Ok(Loaded {
        config,
        version: digest(&bytes),
    })
}

/// Parses and checks a config file's text; relative paths are taken from
/// `base`.
pub fn parse(text: &str, base: &Path, env: &dyn Env) -> Result<GatewayConfig, ConfigErrors> {
    let table: Table = toml::from_str(text).map_err(|e| {
        ConfigErrors::one("", format!("not valid TOML: {}", e.to_string().trim_end()))
    })?;
    let mut cx = Cx {
        errors: Vec::new(),
        env,
        base: base.to_path_buf(),
        route_indices: Vec::new(),
        upstream_names: Vec::new(),
    };
    let config = cx.gateway(&table);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

/// The walk over the table: collects errors, never stops at the first.
struct Cx<'e> {
    errors: Vec<ConfigError>,
    env: &'e dyn Env,
    base: PathBuf,
    /// The index in the file of each route kept (routes with errors are
    /// left out of the model, but paths name them by their place).
    route_indices: Vec<usize>,
    /// Every upstream name declared, by index, valid or not: a route naming
    /// an upstream with errors is not reported again.
    upstream_names: Vec<(usize, String)>,
}

/// A table being read, with its path.
#[derive(Clone, Copy)]
struct Node<'a> {
    path: &'a str,
    table: &'a Table,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The closest of `known` to `word`, if close enough to be a typo.
pub fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn unknown(word: &str, what: &str, known: &[&str]) -> String {
    match suggest(word, known) {
        Some(close) => format!("unknown {what} `{word}`; did you mean `{close}`?"),
        None => format!(
            "unknown {what} `{word}`; expected one of: {}",
            known.join(", ")
        ),
    }
}

impl Cx<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Refuses fields of `node` that are not in `known`.
    fn known(&mut self, node: Node<'_>, known: &[&str]) {
        for key in node.table.keys() {
            if !known.contains(&key.as_str()) {
                let message = unknown(key, "field", known);
                self.error(join(node.path, key), message);
            }
        }
    }

    /// The table at `key` of `node`, if present and a table.
    fn table<'a>(&mut self, node: Node<'a>, key: &str) -> Option<&'a Table> {
        match node.table.get(key)? {
            Value::Table(table) => Some(table),
            other => {
                let message = format!("expected a table, found {}", type_name(other));
                self.error(join(node.path, key), message);
                None
            }
        }
    }

    /// The tables of the array at `key` of `node` (each with its index).
    fn tables<'a>(&mut self, node: Node<'a>, key: &str) -> Vec<(usize, &'a Table)> {
        match node.table.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Table(table) => out.push((i, table)),
                        other => {
                            let message = format!("expected a table, found {}", type_name(other));
                            self.error(format!("{}[{i}]", join(node.path, key)), message);
                        }
                    }
                }
                out
            }
            Some(other) => {
                let message = format!("expected an array of tables, found {}", type_name(other));
                self.error(join(node.path, key), message);
                Vec::new()
            }
        }
    }

    /// Expands `${NAME}` and `${NAME:-default}` in a string value.
    fn expand(&mut self, path: &str, raw: &str) -> Option<String> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.error(path, "unterminated `${` reference");
                return None;
            };
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(
                    path,
                    format!("invalid environment reference `${{{reference}}}`"),
                );
                return None;
            }
            match (self.env.var(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    self.error(path, format!("environment variable {name} is not set"));
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn string(&mut self, node: Node<'_>, key: &str) -> Option<String> {
        let path = join(node.path, key);
        match node.table.get(key)? {
            Value::String(raw) => self.expand(&path, raw),
            other => {
                self.error(
                    path,
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn required_string(&mut self, node: Node<'_>, key: &str) -> Option<String> {
        if !node.table.contains_key(key) {
            self.error(join(node.path, key), "required");
            return None;
        }
        self.string(node, key)
    }

    /// A secret: `key`, or the content of the file at `key_file`.
    fn secret(&mut self, node: Node<'_>, key: &str) -> Option<Secret> {
        let file_key = format!("{key}_file");
        match (
            node.table.contains_key(key),
            node.table.contains_key(&file_key),
        ) {
            (true, true) => {
                self.error(
                    join(node.path, &file_key),
                    format!("give `{key}` or `{file_key}`, not both"),
                );
                None
            }
            (true, false) => self.string(node, key).map(Secret),
            (false, true) => {
                let path = self.path(node, &file_key)?;
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(Secret(text.trim().to_owned())),
                    Err(e) => {
                        self.error(
                            join(node.path, &file_key),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (false, false) => None,
        }
    }

    /// A file path, relative to the config file's directory.
    fn path(&mut self, node: Node<'_>, key: &str) -> Option<PathBuf> {
        let value = self.string(node, key)?;
        let path = PathBuf::from(value);
        Some(if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        })
    }

    fn required_path(&mut self, node: Node<'_>, key: &str) -> Option<PathBuf> {
        if !node.table.contains_key(key) {
            self.error(join(node.path, key), "required");
            return None;
        }
        self.path(node, key)
    }

    fn bool(&mut self, node: Node<'_>, key: &str) -> Option<bool> {
        match node.table.get(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                let message = format!("expected a boolean, found {}", type_name(other));
                self.error(join(node.path, key), message);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int(&mut self, node: Node<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let path = join(node.path, key);
        match node.table.get(key)? {
            Value::Integer(n) if (min..=max).contains(n) => Some(*n),
            Value::Integer(n) => {
                self.error(path, format!("{n} is out of range ({min} to {max})"));
                None
            }
            other => {
                self.error(
                    path,
                    format!("expected an integer, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn u32(&mut self, node: Node<'_>, key: &str, min: u32) -> Option<u32> {
        self.int(node, key, i64::from(min), i64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    fn usize(&mut self, node: Node<'_>, key: &str, min: usize) -> Option<usize> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        self.int(node, key, min, i64::from(u32::MAX))
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A number in `min..=max` (an integer is taken as a float).
    fn fraction(&mut self, node: Node<'_>, key: &str, min: f64, max: f64) -> Option<f64> {
        let path = join(node.path, key);
        #[allow(clippy::cast_precision_loss)]
        let value = match node.table.get(key)? {
            Value::Float(f) => *f,
            Value::Integer(n) => *n as f64,
            other => {
                self.error(
                    path,
                    format!("expected a number, found {}", type_name(other)),
                );
                return None;
            }
        };
        if !(min..=max).contains(&value) {
            self.error(path, format!("{value} is out of range ({min} to {max})"));
            return None;
        }
        Some(value)
    }

    /// A duration: `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`.
    fn duration(&mut self, node: Node<'_>, key: &str) -> Option<Duration> {
        let path = join(node.path, key);
        let text = match node.table.get(key)? {
            Value::String(s) => self.expand(&path, s)?,
            other => {
                self.error(
                    path,
                    format!(
                        "expected a duration such as \"10s\", found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Some(d) => Some(d),
            None => {
                self.error(
                    path,
                    format!(
                        "invalid duration {text:?}: a whole number and a unit (ms, s, m, h, d), such as \"10s\""
                    ),
                );
                None
            }
        }
    }

    fn positive_duration(&mut self, node: Node<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(node, key)?;
        if d.is_zero() {
            self.error(join(node.path, key), "must be more than zero");
            return None;
        }
        Some(d)
    }

    fn addr(&mut self, node: Node<'_>, key: &str) -> Option<SocketAddr> {
        let text = self.string(node, key)?;
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    join(node.path, key),
                    format!("invalid socket address {text:?} (expected ip:port)"),
                );
                None
            }
        }
    }

    /// An array of strings; a lone string is taken as an array of one when
    /// `lone` is set.
    fn strings(&mut self, node: Node<'_>, key: &str, lone: bool) -> Option<Vec<String>> {
        let path = join(node.path, key);
        match node.table.get(key)? {
            Value::String(s) if lone => self.expand(&path, s).map(|s| vec![s]),
            Value::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    match item {
                        Value::String(s) => match self.expand(&item_path, s) {
                            Some(s) => out.push(s),
                            None => ok = false,
                        },
                        other => {
                            let message = format!("expected a string, found {}", type_name(other));
                            self.error(item_path, message);
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            other => {
                let message = format!("expected an array of strings, found {}", type_name(other));
                self.error(path, message);
                None
            }
        }
    }

    /// One of `choices`, by name.
    fn choice<T: Copy>(&mut self, node: Node<'_>, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let value = self.string(node, key)?;
        if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(*choice);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let message = unknown(&value, "value", &names);
        self.error(join(node.path, key), message);
        None
    }

    fn methods(&mut self, node: Node<'_>, key: &str) -> Option<Vec<Method>> {
        let names = self.strings(node, key, false)?;
        let mut methods = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            if upper != *name {
                self.error(
                    format!("{}[{i}]", join(node.path, key)),
                    format!("methods are upper case: `{upper}`"),
                );
                continue;
            }
            match Method::from_bytes(name.as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => self.error(
                    format!("{}[{i}]", join(node.path, key)),
                    format!("invalid method {name:?}"),
                ),
            }
        }
        Some(methods)
    }

    // -- sections ----------------------------------------------------------

    fn gateway(&mut self, root: &Table) -> GatewayConfig {
        let root = Node {
            path: "",
            table: root,
        };
        self.known(
            root,
            &[
                "listeners",
                "server",
                "auth",
                "rbac",
                "upstreams",
                "routes",
                "ratelimit",
                "discovery",
                "metrics",
                "tracing",
                "demo",
            ],
        );
        let listeners = self.listeners(root);
        let server = self.server(root);
        let auth = self.auth(root);
        let rbac = self.rbac(root);
        let discovery = self.discovery(root);
        let upstreams = self.upstreams(root);
        let ratelimit = self.ratelimit(root);
        let routes = self.routes(root);
        let metrics = match self.table(root, "metrics") {
            Some(table) => {
                let node = Node {
                    path: "metrics",
                    table,
                };
                self.known(node, &["consumers"]);
                MetricsSettings {
                    consumers: self.bool(node, "consumers").unwrap_or(false),
                }
            }
            None => MetricsSettings::default(),
        };
        let tracing = match self.table(root, "tracing") {
            Some(table) => {
                let node = Node {
                    path: "tracing",
                    table,
                };
                self.known(node, &["sample_ratio"]);
                TracingSettings {
                    sample_ratio: self.fraction(node, "sample_ratio", 0.0, 1.0).unwrap_or(1.0),
                }
            }
            None => TracingSettings { sample_ratio: 1.0 },
        };
        let demo = self.demo(root);
        let config = GatewayConfig {
            listeners,
            server,
            auth,
            rbac,
            upstreams,
            routes,
            ratelimit,
            discovery,
            metrics,
            tracing,
            demo,
        };
        self.references(&config);
        config
    }

    fn listeners(&mut self, root: Node<'_>) -> Listeners {
        let mut listeners = Listeners {
            public: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            tls: None,
        };
        let Some(table) = self.table(root, "listeners") else {
            return listeners;
        };
        let node = Node {
            path: "listeners",
            table,
        };
        self.known(node, &["public", "admin", "tls"]);
        if let Some(addr) = self.addr(node, "public") {
            listeners.public = addr;
        }
        if let Some(addr) = self.addr(node, "admin") {
            listeners.admin = addr;
        }
        if let Some(table) = self.table(node, "tls") {
            let tls = Node {
                path: "listeners.tls",
                table,
            };
            self.known(
                tls,
                &[
                    "cert_file",
                    "key_file",
                    "client_ca_file",
                    "client_certificates",
                    "reload_interval",
                ],
            );
            let cert_file = self.required_path(tls, "cert_file");
            let key_file = self.required_path(tls, "key_file");
            // With it, client certificates are required and verified
            // against this CA; without it, plain server TLS.
            let client_ca_file = self.path(tls, "client_ca_file");
            let client_certificates_required = match self.string(tls, "client_certificates") {
                None => true,
                Some(mode) => match mode.as_str() {
                    "required" => true,
                    "optional" => false,
                    other => {
                        self.error(
                            "listeners.tls.client_certificates",
                            format!("unknown mode {other:?}: \"required\" or \"optional\""),
                        );
                        true
                    }
                },
            };
            if tls.table.contains_key("client_certificates") && client_ca_file.is_none() {
                self.error(
                    "listeners.tls.client_certificates",
                    "needs `client_ca_file`: the CA client certificates must chain to",
                );
            }
            let reload_interval = self.positive_duration(tls, "reload_interval");
            if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
                listeners.tls = Some(ListenerTls {
                    cert_file,
                    key_file,
                    client_ca_file,
                    client_certificates_required,
                    reload_interval,
                });
            }
        }
        listeners
    }

    fn server(&mut self, root: Node<'_>) -> Limits {
        let mut limits = Limits::default();
        let Some(table) = self.table(root, "server") else {
            return limits;
        };
        let node = Node {
            path: "server",
            table,
        };
        self.known(
            node,
            &[
                "header_read_timeout",
                "keep_alive_timeout",
                "http2_idle_timeout",
                "max_connections",
                "max_connections_per_ip",
                "progress_timeout",
                "max_head_bytes",
                "max_concurrent_streams",
                "shutdown_timeout",
            ],
        );
        if let Some(d) = self.positive_duration(node, "header_read_timeout") {
            limits.header_read_timeout = d;
        }
        if let Some(d) = self.positive_duration(node, "keep_alive_timeout") {
            limits.keep_alive_timeout = d;
        }
        if let Some(d) = self.positive_duration(node, "http2_idle_timeout") {
            limits.http2_idle_timeout = d;
        }
        if let Some(n) = self.usize(node, "max_connections", 1) {
            limits.max_connections = n;
        }
        if let Some(n) = self.usize(node, "max_connections_per_ip", 1) {
            limits.max_connections_per_ip = n;
        }
        if let Some(d) = self.positive_duration(node, "progress_timeout") {
            limits.progress_timeout = d;
        }
        if let Some(n) = self.usize(node, "max_head_bytes", 1024) {
            limits.max_head_bytes = n;
        }
        if let Some(n) = self.u32(node, "max_concurrent_streams", 1) {
            limits.max_concurrent_streams = n;
        }
        if let Some(d) = self.duration(node, "shutdown_timeout") {
            limits.shutdown_timeout = d;
        }
        limits
    }

    fn auth(&mut self, root: Node<'_>) -> Option<AuthConfig> {
        let table = self.table(root, "auth")?;
        let node = Node {
            path: "auth",
            table,
        };
        self.known(
            node,
            &[
                "issuers",
                "leeway",
                "max_lifetime",
                "role_claims",
                "forward_subject",
                "forward_roles",
                "failures_per_minute",
                "jwks_refresh_interval",
                "jwks_min_refetch_interval",
            ],
        );
        let mut issuers = Vec::new();
        let items = self.tables(node, "issuers");
        if items.is_empty() && !table.contains_key("issuers") {
            self.error("auth.issuers", "at least one issuer is required");
        }
        for (i, table) in items {
            let path = format!("auth.issuers[{i}]");
            if let Some(issuer) = self.issuer(Node { path: &path, table }) {
                issuers.push(issuer);
            }
        }
        let mut seen = BTreeSet::new();
        for (i, issuer) in issuers.iter().enumerate() {
            let name = issuer.issuer.clone().unwrap_or_else(|| "*".to_owned());
            if !seen.insert(name.clone()) {
                self.error(
                    format!("auth.issuers[{i}].issuer"),
                    format!("issuer {name:?} is listed twice"),
                );
            }
        }
        let role_claims = self
            .strings(node, "role_claims", true)
            .unwrap_or_else(|| vec!["roles".to_owned(), "role".to_owned()]);
        for (i, claim) in role_claims.iter().enumerate() {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                self.error(
                    format!("auth.role_claims[{i}]"),
                    format!(
                        "invalid claim path {claim:?} (dotted, such as \"realm_access.roles\")"
                    ),
                );
            }
        }
        let header = |cx: &mut Self, key: &str| {
            let value = cx.string(node, key)?;
            if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                cx.error(join("auth", key), format!("invalid header name {value:?}"));
                return None;
            }
            Some(value)
        };
        let forward_subject = header(self, "forward_subject");
        let forward_roles = header(self, "forward_roles");
        Some(AuthConfig {
            issuers,
            leeway: self
                .duration(node, "leeway")
                .unwrap_or(Duration::from_secs(30)),
            max_lifetime: self.positive_duration(node, "max_lifetime"),
            role_claims,
            forward_subject,
            forward_roles,
            failures_per_minute: self.u32(node, "failures_per_minute", 0).unwrap_or(0),
            jwks_refresh_interval: self
                .positive_duration(node, "jwks_refresh_interval")
                .unwrap_or(Duration::from_secs(300)),
            jwks_min_refetch_interval: self
                .duration(node, "jwks_min_refetch_interval")
                .unwrap_or(Duration::from_secs(10)),
        })
    }

    fn issuer(&mut self, node: Node<'_>) -> Option<IssuerConfig> {
        self.known(
            node,
            &["issuer", "audience", "oidc_discovery", "jwks_url", "keys"],
        );
        let issuer = self.required_string(node, "issuer");
        let audiences = self.strings(node, "audience", true).unwrap_or_default();
        let oidc_discovery = self.bool(node, "oidc_discovery").unwrap_or(false);
        let jwks_url = self.string(node, "jwks_url");
        if let Some(url) = &jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            self.error(
                join(node.path, "jwks_url"),
                format!("{url:?} is not an http(s) URL"),
            );
        }
        let mut keys = Vec::new();
        for (i, table) in self.tables(node, "keys") {
            let path = format!("{}.keys[{i}]", node.path);
            if let Some(key) = self.key(Node { path: &path, table }) {
                keys.push(key);
            }
        }
        let issuer = issuer?;
        let any = issuer == "*";
        if oidc_discovery && jwks_url.is_some() {
            self.error(
                join(node.path, "jwks_url"),
                "give `oidc_discovery` or `jwks_url`, not both",
            );
        }
        if oidc_discovery && any {
            self.error(
                join(node.path, "oidc_discovery"),
                "OIDC discovery needs a named issuer, not \"*\"",
            );
        }
        if !oidc_discovery
            && jwks_url.is_none()
            && keys.is_empty()
            && !node.table.contains_key("keys")
        {
            self.error(
                node.path,
                "no keys: set `oidc_discovery = true`, `jwks_url` or `keys`",
            );
        }
        Some(IssuerConfig {
            issuer: (!any).then_some(issuer),
            audiences,
            oidc_discovery,
            jwks_url,
            keys,
        })
    }

    fn key(&mut self, node: Node<'_>) -> Option<KeyConfig> {
        self.known(node, &["kind", "secret", "secret_file", "pem_file", "kid"]);
        let kind = self.required_string(node, "kind");
        let kid = self.string(node, "kid");
        let material = match kind.as_deref() {
            Some("hmac") => {
                if node.table.contains_key("pem_file") {
                    self.error(
                        join(node.path, "pem_file"),
                        "an hmac key takes `secret` or `secret_file`",
                    );
                }
                let secret = self.secret(node, "secret");
                match secret {
                    Some(s) if s.0.len() < 32 => {
                        self.error(
                            join(node.path, "secret"),
                            "an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)",
                        );
                        None
                    }
                    Some(s) => Some(KeyMaterial::Hmac(s)),
                    None => {
                        if !node.table.contains_key("secret")
                            && !node.table.contains_key("secret_file")
                        {
                            self.error(join(node.path, "secret"), "required for an hmac key");
                        }
                        None
                    }
                }
            }
            Some(kind @ ("rsa" | "ec" | "ed")) => {
                if node.table.contains_key("secret") || node.table.contains_key("secret_file") {
                    self.error(
                        join(node.path, "secret"),
                        format!("an {kind} key takes `pem_file` (the public key)"),
                    );
                }
                let pem = self.required_path(node, "pem_file")?;
                Some(match kind {
                    "rsa" => KeyMaterial::Rsa(pem),
                    "ec" => KeyMaterial::Ec(pem),
                    _ => KeyMaterial::Ed(pem),
                })
            }
            Some(other) => {
                let message = unknown(other, "key kind", &["hmac", "rsa", "ec", "ed"]);
                self.error(join(node.path, "kind"), message);
                None
            }
            None => None,
        }?;
        Some(KeyConfig { material, kid })
    }

    fn rbac(&mut self, root: Node<'_>) -> RbacConfig {
        let mut rbac = RbacConfig::default();
        let Some(table) = self.table(root, "rbac") else {
            return rbac;
        };
        let node = Node {
            path: "rbac",
            table,
        };
        self.known(node, &["hierarchy"]);
        if let Some(table) = self.table(node, "hierarchy") {
            let hierarchy = Node {
                path: "rbac.hierarchy",
                table,
            };
            for role in table.keys() {
                if let Some(implied) = self.strings(hierarchy, role, true) {
                    rbac.hierarchy.insert(role.clone(), implied);
                }
            }
        }
        rbac
    }

    fn discovery(&mut self, root: Node<'_>) -> DiscoveryConfig {
        let mut discovery = DiscoveryConfig::default();
        let Some(table) = self.table(root, "discovery") else {
            return discovery;
        };
        let node = Node {
            path: "discovery",
            table,
        };
        self.known(node, &["consul"]);
        let Some(table) = self.table(node, "consul") else {
            return discovery;
        };
        let consul = Node {
            path: "discovery.consul",
            table,
        };
        self.known(
            consul,
            &["address", "token", "token_file", "datacenter", "tls"],
        );
        let address = self
            .string(consul, "address")
            .unwrap_or_else(|| "127.0.0.1:8500".to_owned());
        let token = self.secret(consul, "token");
        let datacenter = self.string(consul, "datacenter");
        let tls = self.table(consul, "tls").map(|table| {
            let tls = Node {
                path: "discovery.consul.tls",
                table,
            };
            self.known(tls, &["ca_file", "cert_file", "key_file", "server_name"]);
            let tls_config = ConsulTls {
                ca_file: self.path(tls, "ca_file"),
                cert_file: self.path(tls, "cert_file"),
                key_file: self.path(tls, "key_file"),
                server_name: self.string(tls, "server_name"),
            };
            if tls_config.cert_file.is_some() != tls_config.key_file.is_some() {
                self.error(
                    "discovery.consul.tls",
                    "`cert_file` and `key_file` go together",
                );
            }
            tls_config
        });
        discovery.consul = Some(ConsulConfig {
            address,
            token,
            datacenter,
            tls,
        });
        discovery
    }

    fn upstreams(&mut self, root: Node<'_>) -> Vec<UpstreamConfig> {
        let mut upstreams: Vec<UpstreamConfig> = Vec::new();
        for (i, table) in self.tables(root, "upstreams") {
            let path = format!("upstreams[{i}]");
            let node = Node { path: &path, table };
            if let Some(Value::String(name)) = table.get("name") {
                self.upstream_names.push((i, name.clone()));
            }
            if let Some(upstream) = self.upstream(node) {
                if upstreams.iter().any(|u| u.name == upstream.name) {
                    self.error(
                        join(&path, "name"),
                        format!("upstream {:?} is declared twice", upstream.name),
                    );
                }
                upstreams.push(upstream);
            }
        }
        upstreams
    }

    fn upstream(&mut self, node: Node<'_>) -> Option<UpstreamConfig> {
        self.known(
            node,
            &[
                "name",
                "instances",
                "consul",
                "tls",
                "balancer",
                "connect_timeout",
                "request_timeout",
                "retries",
                "circuit",
            ],
        );
        let name = self.required_string(node, "name");
        let discovery = match (
            node.table.contains_key("instances"),
            node.table.contains_key("consul"),
        ) {
            (true, true) => {
                self.error(node.path, "give `instances` or `consul`, not both");
                None
            }
            (false, false) => {
                self.error(node.path, "no instances: set `instances` or `consul`");
                None
            }
            (true, false) => {
                let instances = self.strings(node, "instances", false).unwrap_or_default();
                let mut parsed = Vec::new();
                for (i, instance) in instances.iter().enumerate() {
                    match instance
                        .rsplit_once(':')
                        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    {
                        Some((host, port)) if !host.is_empty() && port > 0 => {
                            let host = host.trim_start_matches('[').trim_end_matches(']');
                            parsed.push((host.to_owned(), port));
                        }
                        _ => self.error(
                            format!("{}.instances[{i}]", node.path),
                            format!("invalid instance {instance:?} (expected host:port)"),
                        ),
                    }
                }
                if instances.is_empty()
                    && node
                        .table
                        .get("instances")
                        .is_some_and(|v| v.as_array().is_some())
                {
                    self.error(
                        join(node.path, "instances"),
                        "at least one instance is required",
                    );
                }
                Some(UpstreamDiscovery::Static(parsed))
            }
            (false, true) => self.table(node, "consul").and_then(|table| {
                let path = join(node.path, "consul");
                let consul = Node { path: &path, table };
                self.known(consul, &["service", "tags"]);
                let service = self.required_string(consul, "service")?;
                let tags = self.strings(consul, "tags", true).unwrap_or_default();
                Some(UpstreamDiscovery::Consul { service, tags })
            }),
        };
        let tls = match node.table.get("tls") {
            None => None,
            Some(Value::String(s)) if s == "demo" => Some(UpstreamTls::Demo),
            Some(Value::String(s)) => {
                self.error(
                    join(node.path, "tls"),
                    format!("expected a table of files or \"demo\", found {s:?}"),
                );
                None
            }
            Some(_) => self.table(node, "tls").and_then(|table| {
                let path = join(node.path, "tls");
                let tls = Node { path: &path, table };
                self.known(
                    tls,
                    &["ca_file", "cert_file", "key_file", "server_name", "http2"],
                );
                let ca_file = self.required_path(tls, "ca_file");
                let cert_file = self.required_path(tls, "cert_file");
                let key_file = self.required_path(tls, "key_file");
                let server_name = self.string(tls, "server_name");
                let http2 = self.bool(tls, "http2").unwrap_or(false);
                Some(UpstreamTls::Files {
                    ca_file: ca_file?,
                    cert_file: cert_file?,
                    key_file: key_file?,
                    server_name,
                    http2,
                })
            }),
        };
        let balancer = self
            .choice(
                node,
                "balancer",
                &[
                    ("least_request", BalancerChoice::LeastRequest),
                    ("round_robin", BalancerChoice::RoundRobin),
                    ("peak_ewma", BalancerChoice::PeakEwma),
                ],
            )
            .unwrap_or(BalancerChoice::LeastRequest);
        let connect_timeout = self
            .positive_duration(node, "connect_timeout")
            .unwrap_or(Duration::from_secs(1));
        let request_timeout = self
            .positive_duration(node, "request_timeout")
            .unwrap_or(Duration::from_secs(10));
        let retries = self.usize(node, "retries", 0).unwrap_or(2);
        let circuit = match node.table.get("circuit") {
            None => None,
            Some(Value::Boolean(false)) => None,
            Some(Value::Boolean(true)) => Some(CircuitSettings::default()),
            Some(_) => self.table(node, "circuit").map(|table| {
                let path = join(node.path, "circuit");
                self.circuit(Node { path: &path, table })
            }),
        };
        Some(UpstreamConfig {
            name: name?,
            discovery: discovery?,
            tls,
            balancer,
            connect_timeout,
            request_timeout,
            retries,
            circuit,
        })
    }

    fn circuit(&mut self, node: Node<'_>) -> CircuitSettings {
        self.known(
            node,
            &[
                "failure_rate",
                "minimum_calls",
                "consecutive_failures",
                "window",
                "window_calls",
                "open_duration",
                "max_open_duration",
                "half_open_probes",
                "max_ejected_fraction",
            ],
        );
        let defaults = CircuitSettings::default();
        if node.table.contains_key("window") && node.table.contains_key("window_calls") {
            self.error(
                join(node.path, "window_calls"),
                "give `window` (a duration) or `window_calls` (a count), not both",
            );
        }
        let settings = CircuitSettings {
            failure_rate: self
                .fraction(node, "failure_rate", 0.0, 1.0)
                .unwrap_or(defaults.failure_rate),
            minimum_calls: self
                .u32(node, "minimum_calls", 1)
                .unwrap_or(defaults.minimum_calls),
            consecutive_failures: match self.u32(node, "consecutive_failures", 0) {
                Some(0) => None,
                Some(n) => Some(n),
                None => defaults.consecutive_failures,
            },
            window: self
                .positive_duration(node, "window")
                .unwrap_or(defaults.window),
            window_calls: self.u32(node, "window_calls", 1),
            open_duration: self
                .positive_duration(node, "open_duration")
                .unwrap_or(defaults.open_duration),
            max_open_duration: self
                .positive_duration(node, "max_open_duration")
                .unwrap_or(defaults.max_open_duration),
            half_open_probes: self
                .u32(node, "half_open_probes", 1)
                .unwrap_or(defaults.half_open_probes),
            max_ejected_fraction: self
                .fraction(node, "max_ejected_fraction", 0.0, 1.0)
                .unwrap_or(defaults.max_ejected_fraction),
        };
        if settings.max_open_duration < settings.open_duration {
            self.error(
                join(node.path, "max_open_duration"),
                "must not be shorter than `open_duration`",
            );
        }
        settings
    }

    fn ratelimit(&mut self, root: Node<'_>) -> RateLimitConfig {
        let mut config = RateLimitConfig {
            backend: RateLimitBackend::Local,
            on_backend_error: FailureChoice::Local,
            fallback_share: 1.0,
            per_ip_second: 0,
            limits: BTreeMap::new(),
        };
        let Some(table) = self.table(root, "ratelimit") else {
            return config;
        };
        let node = Node {
            path: "ratelimit",
            table,
        };
        self.known(
            node,
            &[
                "backend",
                "redis_url",
                "redis_url_file",
                "cluster_nodes",
                "timeout",
                "prefix",
                "on_backend_error",
                "fallback_share",
                "per_ip_second",
                "limits",
            ],
        );
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            Local,
            Redis,
            Cluster,
        }
        let kind = self
            .choice(
                node,
                "backend",
                &[
                    ("local", Kind::Local),
                    ("redis", Kind::Redis),
                    ("cluster", Kind::Cluster),
                ],
            )
            .unwrap_or(Kind::Local);
        let timeout = self
            .positive_duration(node, "timeout")
            .unwrap_or(Duration::from_millis(100));
        let prefix = self
            .string(node, "prefix")
            .unwrap_or_else(|| "rl:".to_owned());
        if prefix.contains(['{', '}']) {
            self.error("ratelimit.prefix", "must not contain `{` or `}`");
        }
        let url = self.secret(node, "redis_url");
        let nodes = self.strings(node, "cluster_nodes", false);
        config.backend = match kind {
            Kind::Local => {
                for key in ["redis_url", "redis_url_file", "cluster_nodes"] {
                    if node.table.contains_key(key) {
                        self.error(
                            join("ratelimit", key),
                            "only used with `backend = \"redis\"` or `\"cluster\"`",
                        );
                    }
                }
                RateLimitBackend::Local
            }
            Kind::Redis => match url {
                Some(url) => RateLimitBackend::Redis {
                    url,
                    timeout,
                    prefix,
                },
                None => {
                    if !node.table.contains_key("redis_url")
                        && !node.table.contains_key("redis_url_file")
                    {
                        self.error("ratelimit.redis_url", "required with `backend = \"redis\"`");
                    }
                    RateLimitBackend::Local
                }
            },
            Kind::Cluster => match nodes {
                Some(nodes) if !nodes.is_empty() => RateLimitBackend::Cluster {
                    nodes: nodes.into_iter().map(Secret).collect(),
                    timeout,
                    prefix,
                },
                _ => {
                    self.error(
                        "ratelimit.cluster_nodes",
                        "at least one node is required with `backend = \"cluster\"`",
                    );
                    RateLimitBackend::Local
                }
            },
        };
        config.on_backend_error = self
            .choice(
                node,
                "on_backend_error",
                &[
                    ("local", FailureChoice::Local),
                    ("allow", FailureChoice::Allow),
                    ("deny", FailureChoice::Deny),
                ],
            )
            .unwrap_or(FailureChoice::Local);
        if let Some(share) = self.fraction(node, "fallback_share", 0.0, 1.0) {
            if share == 0.0 {
                self.error("ratelimit.fallback_share", "must be more than 0");
            } else {
                config.fallback_share = share;
            }
        }
        config.per_ip_second = self.u32(node, "per_ip_second", 0).unwrap_or(0);
        if let Some(table) = self.table(node, "limits") {
            for (name, value) in table {
                let path = format!("ratelimit.limits.{name}");
                match value {
                    Value::Table(table) => {
                        if let Some(spec) = self.limit(Node { path: &path, table }, name) {
                            config.limits.insert(name.clone(), spec);
                        }
                    }
                    other => {
                        let message = format!("expected a table, found {}", type_name(other));
                        self.error(path, message);
                    }
                }
            }
        }
        config
    }

    fn windows(&mut self, node: Node<'_>) -> Windows {
        let window = |cx: &mut Self, key: &str| cx.u32(node, key, 1);
        Windows {
            per_second: window(self, "per_second"),
            per_minute: window(self, "per_minute"),
            per_hour: window(self, "per_hour"),
            per_day: window(self, "per_day"),
        }
    }

    fn limit(&mut self, node: Node<'_>, default_scope: &str) -> Option<LimitSpec> {
        self.known(
            node,
            &[
                "key",
                "per_second",
                "per_minute",
                "per_hour",
                "per_day",
                "tiers",
                "scope",
                "on_missing_key",
            ],
        );
        let key_names = match node.table.get("key") {
            None => {
                self.error(
                    join(node.path, "key"),
                    "required (such as \"consumer\" or [\"consumer\", \"ip\"])",
                );
                None
            }
            Some(_) => self.strings(node, "key", true),
        };
        let mut key = Vec::new();
        for (i, name) in key_names.iter().flatten().enumerate() {
            let path = if matches!(node.table.get("key"), Some(Value::Array(_))) {
                format!("{}.key[{i}]", node.path)
            } else {
                join(node.path, "key")
            };
            match parse_key(name) {
                Ok(kind) => key.push(kind),
                Err(message) => self.error(path, message),
            }
        }
        let windows = self.windows(node);
        let mut tiers = Vec::new();
        for (i, table) in self.tables(node, "tiers") {
            let path = format!("{}.tiers[{i}]", node.path);
            let tier = Node { path: &path, table };
            self.known(
                tier,
                &["role", "per_second", "per_minute", "per_hour", "per_day"],
            );
            let role = self.required_string(tier, "role");
            let tier_windows = self.windows(tier);
            let given = ["per_second", "per_minute", "per_hour", "per_day"]
                .iter()
                .any(|k| table.contains_key(*k));
            if tier_windows.is_empty() && !given {
                self.error(
                    path.clone(),
                    "no window: set per_second, per_minute, per_hour or per_day",
                );
            }
            if let Some(role) = role {
                if tiers.iter().any(|(r, _): &(String, Windows)| *r == role) {
                    self.error(join(&path, "role"), format!("role {role:?} has two tiers"));
                }
                tiers.push((role, tier_windows));
            }
        }
        let window_given = ["per_second", "per_minute", "per_hour", "per_day", "tiers"]
            .iter()
            .any(|k| node.table.contains_key(*k));
        if windows.is_empty() && tiers.is_empty() && !window_given {
            self.error(
                node.path,
                "no limit: set per_second, per_minute, per_hour or per_day, or tiers",
            );
        }
        let scope = self
            .string(node, "scope")
            .unwrap_or_else(|| default_scope.to_owned());
        if scope.is_empty() || scope.len() > 64 {
            self.error(join(node.path, "scope"), "1 to 64 characters");
        }
        let on_missing_key = self
            .choice(
                node,
                "on_missing_key",
                &[
                    ("reject", MissingKeyChoice::Reject),
                    ("allow", MissingKeyChoice::Allow),
                ],
            )
            .unwrap_or(MissingKeyChoice::Reject);
        (!key.is_empty()).then_some(LimitSpec {
            key,
            windows,
            tiers,
            scope,
            on_missing_key,
        })
    }

    fn routes(&mut self, root: Node<'_>) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        if !root.table.contains_key("routes") {
            self.error("routes", "at least one route is required");
        }
        for (i, table) in self.tables(root, "routes") {
            let path = format!("routes[{i}]");
            if let Some(route) = self.route(Node { path: &path, table }) {
                routes.push((i, route));
            }
        }
        // Routes that failed keep their index in error paths: the rest are
        // kept in order, and `references` maps them back by position in
        // `route_indices`.
        self.route_indices = routes.iter().map(|(i, _)| *i).collect();
        routes.into_iter().map(|(_, r)| r).collect()
    }

    fn route(&mut self, node: Node<'_>) -> Option<RouteConfig> {
        self.known(
            node,
            &[
                "name",
                "prefix",
                "exact",
                "host",
                "methods",
                "upstream",
                "auth",
                "rules",
                "limits",
                "timeout",
                "retries",
                "strip_prefix",
            ],
        );
        let name = self.string(node, "name");
        let (path, exact) = match (
            node.table.contains_key("prefix"),
            node.table.contains_key("exact"),
        ) {
            (true, true) => {
                self.error(node.path, "give `prefix` or `exact`, not both");
                (None, false)
            }
            (false, false) => {
                self.error(node.path, "no match: set `prefix` or `exact`");
                (None, false)
            }
            (true, false) => (self.string(node, "prefix"), false),
            (false, true) => (self.string(node, "exact"), true),
        };
        let key = if exact { "exact" } else { "prefix" };
        if let Some(p) = &path
            && !p.starts_with('/')
        {
            self.error(join(node.path, key), format!("{p:?} must start with `/`"));
        }
        let host = self.string(node, "host");
        let methods = self.methods(node, "methods").unwrap_or_default();
        let upstream = self.required_string(node, "upstream");
        let auth = self
            .choice(
                node,
                "auth",
                &[
                    ("required", AuthChoice::Required),
                    ("optional", AuthChoice::Optional),
                    ("none", AuthChoice::None),
                ],
            )
            .unwrap_or(AuthChoice::Required);
        let mut rules = Vec::new();
        for (i, table) in self.tables(node, "rules") {
            let rule_path = format!("{}.rules[{i}]", node.path);
            let rule = Node {
                path: &rule_path,
                table,
            };
            if let Some(rule) = self.rule(rule, &methods) {
                rules.push(rule);
            }
        }
        let mut limits = Vec::new();
        match node.table.get("limits") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let limit_path = format!("{}.limits[{i}]", node.path);
                    match item {
                        Value::String(name) => limits.push(LimitRef::Named(name.clone())),
                        Value::Table(table) => {
                            let template =
                                name.clone().or_else(|| path.clone()).unwrap_or_default();
                            let scope = format!("{template}#{i}");
                            if let Some(spec) = self.limit(
                                Node {
                                    path: &limit_path,
                                    table,
                                },
                                &scope,
                            ) {
                                limits.push(LimitRef::Inline(spec));
                            }
                        }
                        other => {
                            let message = format!(
                                "expected the name of a limit in `ratelimit.limits` or a table, found {}",
                                type_name(other)
                            );
                            self.error(limit_path, message);
                        }
                    }
                }
            }
            Some(other) => {
                let message = format!("expected an array, found {}", type_name(other));
                self.error(join(node.path, "limits"), message);
            }
        }
        let timeout = self.positive_duration(node, "timeout");
        let retries = self.usize(node, "retries", 0);
        let strip_prefix = self.bool(node, "strip_prefix").unwrap_or(false);
        Some(RouteConfig {
            name,
            path: path?,
            exact,
            host,
            methods,
            upstream: upstream?,
            auth,
            rules,
            limits,
            timeout,
            retries,
            strip_prefix,
        })
    }

    fn rule(&mut self, node: Node<'_>, route_methods: &[Method]) -> Option<RuleConfig> {
        self.known(node, &["methods", "roles", "all_roles", "allow"]);
        let methods = self.methods(node, "methods").unwrap_or_default();
        if !route_methods.is_empty() {
            for (i, method) in methods.iter().enumerate() {
                // A GET rule also guards HEAD, so HEAD on a GET route is fine.
                let taken = route_methods.contains(method)
                    || (*method == Method::HEAD && route_methods.contains(&Method::GET));
                if !taken {
                    self.error(
                        format!("{}.methods[{i}]", node.path),
                        format!("the route does not take {method}: the rule would never apply"),
                    );
                }
            }
        }
        let given: Vec<&str> = ["roles", "all_roles", "allow"]
            .into_iter()
            .filter(|k| node.table.contains_key(*k))
            .collect();
        if given.len() != 1 {
            self.error(
                node.path,
                "exactly one of `roles`, `all_roles` or `allow` is required",
            );
            return None;
        }
        let who = match given[0] {
            "roles" | "all_roles" => {
                let roles = self.strings(node, given[0], true)?;
                if roles.is_empty() {
                    self.error(
                        join(node.path, given[0]),
                        "an empty role set refuses everyone; list at least one role",
                    );
                    return None;
                }
                if given[0] == "roles" {
                    Who::AnyOf(roles)
                } else {
                    Who::AllOf(roles)
                }
            }
            _ => self
                .choice(
                    node,
                    "allow",
                    &[
                        ("authenticated", WhoTag::Authenticated),
                        ("public", WhoTag::Public),
                    ],
                )?
                .into(),
        };
        Some(RuleConfig { methods, who })
    }

    fn demo(&mut self, root: Node<'_>) -> Option<DemoConfig> {
        let table = self.table(root, "demo")?;
        let node = Node {
            path: "demo",
            table,
        };
        self.known(node, &["services", "service_metrics_port", "auth_server"]);
        let mut services = Vec::new();
        if let Some(table) = self.table(node, "services") {
            let services_node = Node {
                path: "demo.services",
                table,
            };
            self.known(services_node, DEMO_SERVICES);
            for name in DEMO_SERVICES {
                if let Some(addr) = self.addr(services_node, name) {
                    services.push(((*name).to_owned(), addr));
                }
            }
        }
        let service_metrics_port = match self.int(node, "service_metrics_port", 0, 65533) {
            Some(0) | None => None,
            Some(port) => u16::try_from(port).ok(),
        };
        let auth_server = self.table(node, "auth_server").map(|table| {
            let auth = Node {
                path: "demo.auth_server",
                table,
            };
            self.known(
                auth,
                &[
                    "listen",
                    "key_file",
                    "state_file",
                    "state_key",
                    "state_key_file",
                    "key_rotation",
                    "access_ttl",
                    "refresh_ttl",
                    "users",
                    "clients",
                ],
            );
            let users = table.contains_key("users").then(|| {
                let mut users = Vec::new();
                for (i, table) in self.tables(auth, "users") {
                    let path = format!("demo.auth_server.users[{i}]");
                    let user = Node { path: &path, table };
                    self.known(user, &["name", "password", "password_file", "roles"]);
                    let name = self.required_string(user, "name");
                    let password = self.secret(user, "password");
                    if password.is_none()
                        && !table.contains_key("password")
                        && !table.contains_key("password_file")
                    {
                        self.error(join(&path, "password"), "required");
                    }
                    let roles = self.strings(user, "roles", true).unwrap_or_default();
                    if let (Some(name), Some(password)) = (name, password) {
                        users.push(DemoUser {
                            name,
                            password,
                            roles,
                        });
                    }
                }
                users
            });
            let clients = table.contains_key("clients").then(|| {
                let mut clients = Vec::new();
                for (i, table) in self.tables(auth, "clients") {
                    let path = format!("demo.auth_server.clients[{i}]");
                    let client = Node { path: &path, table };
                    self.known(client, &["id", "secret", "secret_file", "grants", "roles"]);
                    let id = self.required_string(client, "id");
                    let secret = self.secret(client, "secret");
                    let grants = self.strings(client, "grants", true).unwrap_or_default();
                    for (g, grant) in grants.iter().enumerate() {
                        const GRANTS: &[&str] =
                            &["password", "client_credentials", "refresh_token"];
                        if !GRANTS.contains(&grant.as_str()) {
                            let message = unknown(grant, "grant", GRANTS);
                            self.error(format!("{path}.grants[{g}]"), message);
                        }
                    }
                    let roles = self.strings(client, "roles", true).unwrap_or_default();
                    if let Some(id) = id {
                        clients.push(DemoClient {
                            id,
                            secret,
                            grants,
                            roles,
                        });
                    }
                }
                clients
            });
            let key_file = self.path(auth, "key_file");
            let state_file = self.path(auth, "state_file");
            let state_key = self.secret(auth, "state_key");
            match (&key_file, &state_file, &state_key) {
                (Some(_), Some(_), _) => self.error(
                    "demo.auth_server.state_file",
                    "give `key_file` or `state_file`, not both: the state file holds the keys",
                ),
                // A `state_key` given but unusable is reported on its own.
                (_, Some(_), None)
                    if !table.contains_key("state_key")
                        && !table.contains_key("state_key_file") =>
                {
                    self.error("demo.auth_server.state_key", "required with `state_file`");
                }
                (_, None, Some(_)) => {
                    self.error("demo.auth_server.state_file", "required with `state_key`")
                }
                _ => {}
            }
            if let Some(Err(e)) = state_key
                .as_ref()
                .map(|key| super::auth_server::StateKey::parse(key.expose()))
            {
                self.error("demo.auth_server.state_key", e.to_string());
            }
            DemoAuthServer {
                listen: self
                    .addr(auth, "listen")
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9000))),
                key_file,
                state_file,
                state_key,
                key_rotation: match self.duration(auth, "key_rotation") {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => Some(Duration::from_secs(3600)),
                },
                access_ttl: self
                    .positive_duration(auth, "access_ttl")
                    .unwrap_or(Duration::from_secs(300)),
                refresh_ttl: self
                    .positive_duration(auth, "refresh_ttl")
                    .unwrap_or(Duration::from_secs(8 * 3600)),
                users,
                clients,
            }
        });
        Some(DemoConfig {
            services,
            service_metrics_port,
            auth_server,
        })
    }

    /// Checks what sections say about each other.
    fn references(&mut self, config: &GatewayConfig) {
        let declared = std::mem::take(&mut self.upstream_names);
        let upstreams: Vec<&str> = declared.iter().map(|(_, n)| n.as_str()).collect();
        // The index in the file of the last upstream declared with a name.
        let upstream_index = |name: &str| {
            declared
                .iter()
                .rev()
                .find(|(_, n)| n == name)
                .map_or(0, |(i, _)| *i)
        };
        let limits: Vec<&str> = config.ratelimit.limits.keys().map(String::as_str).collect();
        let indices = std::mem::take(&mut self.route_indices);
        let needs_auth = config.routes.iter().any(|r| r.auth != AuthChoice::None);
        if needs_auth && config.auth.is_none() {
            let first = config
                .routes
                .iter()
                .position(|r| r.auth != AuthChoice::None)
                .and_then(|p| indices.get(p))
                .copied()
                .unwrap_or(0);
            self.error(
                format!("routes[{first}].auth"),
                "the route authenticates, but there is no [auth] section with issuers",
            );
        }
        for (position, route) in config.routes.iter().enumerate() {
            let i = indices.get(position).copied().unwrap_or(position);
            if !upstreams.contains(&route.upstream.as_str()) {
                let message = if upstreams.is_empty() {
                    format!(
                        "unknown upstream {:?}: no upstreams are declared",
                        route.upstream
                    )
                } else {
                    unknown(&route.upstream, "upstream", &upstreams)
                };
                self.error(format!("routes[{i}].upstream"), message);
            }
            for (j, limit) in route.limits.iter().enumerate() {
                if let LimitRef::Named(name) = limit
                    && !limits.contains(&name.as_str())
                {
                    let message = if limits.is_empty() {
                        format!("unknown limit {name:?}: `ratelimit.limits` declares none")
                    } else {
                        unknown(name, "limit", &limits)
                    };
                    self.error(format!("routes[{i}].limits[{j}]"), message);
                }
            }
            if route.auth == AuthChoice::None {
                for (j, rule) in route.rules.iter().enumerate() {
                    if rule.who != Who::Public {
                        self.error(
                            format!("routes[{i}].rules[{j}]"),
                            "the route has `auth = \"none\"`, so no caller has an identity: only `allow = \"public\"` can pass",
                        );
                    }
                }
            }
        }
        // The crate's own check of the route table (duplicate matches,
        // prefixes no request can have), route by route so that each error
        // lands on the route that causes it.
        let mut table: Vec<tower_gateway::route::Route> = Vec::new();
        for (position, route) in config.routes.iter().enumerate() {
            let i = indices.get(position).copied().unwrap_or(position);
            let candidate = bare_route(route);
            let built = table
                .iter()
                .cloned()
                .chain([candidate.clone()])
                .fold(tower_gateway::route::Routes::builder(), |b, r| b.route(r))
                .build();
            match built {
                Ok(_) => table.push(candidate),
                Err(error) => self.error(format!("routes[{i}]"), error.to_string()),
            }
        }
        let check_limit = |cx: &mut Self, path: String, spec: &LimitSpec| {
            for (name, windows) in std::iter::once(("", &spec.windows))
                .chain(spec.tiers.iter().map(|(r, w)| (r.as_str(), w)))
            {
                if windows.is_empty() {
                    continue;
                }
                if let Err(error) = limit_of(windows).validate() {
                    let at = if name.is_empty() {
                        path.clone()
                    } else {
                        format!("{path} (tier {name})")
                    };
                    cx.error(at, error.to_string());
                }
            }
        };
        for (name, spec) in &config.ratelimit.limits {
            check_limit(self, format!("ratelimit.limits.{name}"), spec);
        }
        for (position, route) in config.routes.iter().enumerate() {
            let i = indices.get(position).copied().unwrap_or(position);
            for (j, limit) in route.limits.iter().enumerate() {
                if let LimitRef::Inline(spec) = limit {
                    check_limit(self, format!("routes[{i}].limits[{j}]"), spec);
                }
            }
        }
        if let Some(demo) = &config.demo
            && !demo.services.is_empty()
            && demo.auth_server.is_none()
        {
            self.error(
                "demo.services",
                "the demo services verify tokens of the demo auth server: add [demo.auth_server]",
            );
        }
        for upstream in &config.upstreams {
            if matches!(upstream.discovery, UpstreamDiscovery::Consul { .. })
                && config.discovery.consul.is_none()
            {
                let i = upstream_index(&upstream.name);
                self.error(
                    format!("upstreams[{i}].consul"),
                    "needs a [discovery.consul] section",
                );
            }
            if upstream.tls == Some(UpstreamTls::Demo) && config.demo.is_none() {
                let i = upstream_index(&upstream.name);
                self.error(
                    format!("upstreams[{i}].tls"),
                    "\"demo\" needs a [demo] section (the certificates of the demo services)",
                );
            }
        }
    }
}

/// `Who` without data, for [`Cx::choice`] (which needs `Copy`).
#[derive(Clone, Copy)]
enum WhoTag {
    Public,
    Authenticated,
}

impl From<WhoTag> for Who {
    fn from(tag: WhoTag) -> Self {
        match tag {
            WhoTag::Public => Self::Public,
            WhoTag::Authenticated => Self::Authenticated,
        }
    }
}

/// The route's match alone, as the crate's route table takes it.
pub fn bare_route(route: &RouteConfig) -> tower_gateway::route::Route {
    use tower_gateway::route::Route;
    let mut bare = if route.exact {
        Route::exact(route.path.clone())
    } else {
        Route::prefix(route.path.clone())
    };
    if let Some(host) = &route.host {
        bare = bare.host(host.clone());
    }
    if !route.methods.is_empty() {
        bare = bare.methods(route.methods.iter().cloned());
    }
    if let Some(name) = &route.name {
        bare = bare.name(name.clone());
    }
    bare
}

/// The crate's `Limit` of a set of windows.
pub fn limit_of(windows: &Windows) -> tower_gateway::ratelimit::Limit {
    let mut limit = tower_gateway::ratelimit::Limit::new();
    if let Some(n) = windows.per_second {
        limit = limit.per_second(n);
    }
    if let Some(n) = windows.per_minute {
        limit = limit.per_minute(n);
    }
    if let Some(n) = windows.per_hour {
        limit = limit.per_hour(n);
    }
    if let Some(n) = windows.per_day {
        limit = limit.per_day(n);
    }
    limit
}

/// The key kinds a limit may name.
pub const KEY_KINDS: &[&str] = &["consumer", "ip", "route", "header:<name>", "claim:<path>"];

fn parse_key(name: &str) -> Result<KeyKind, String> {
    match name.split_once(':') {
        None => match name {
            "consumer" => Ok(KeyKind::Consumer),
            "ip" => Ok(KeyKind::Ip),
            "route" => Ok(KeyKind::Route),
            other => Err(unknown(other, "key kind", KEY_KINDS)),
        },
        Some(("header", header)) => {
            if http::HeaderName::from_bytes(header.as_bytes()).is_ok() {
                Ok(KeyKind::Header(header.to_ascii_lowercase()))
            } else {
                Err(format!("invalid header name {header:?}"))
            }
        }
        Some(("claim", claim)) if !claim.is_empty() && !claim.split('.').any(str::is_empty) => {
            Ok(KeyKind::Claim(claim.to_owned()))
        }
        Some(("claim", claim)) => Err(format!("invalid claim path {claim:?}")),
        Some((other, _)) => Err(unknown(other, "key kind", &["header", "claim"])),
    }
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}
