//! Consul's HTTP API as the gateway uses it: where the agent is, which token
//! and tenancy to send, how requests are built, and the JSON shapes of the
//! health and agent endpoints.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Deserialize;

use super::registration::{ConsulRegistration, ServiceRegistration};
use super::watch::ConsulWatchBuilder;
use crate::client::{Fetched, HttpClientConfig, HttpClientError, HttpFetcher};
use crate::discovery::Endpoint;

/// The header Consul reads the ACL token from.
const TOKEN_HEADER: &str = "x-consul-token";

/// Why a Consul operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// The agent address is not an `http://` or `https://` URL.
    #[error("invalid consul address {0:?}")]
    Address(String),
    /// The ACL token cannot be sent as an HTTP header value.
    #[error("invalid consul token")]
    Token,
    /// The HTTP client could not be configured (custom CA, TLS).
    #[error(transparent)]
    Client(#[from] HttpClientError),
    /// A background task was asked for outside a Tokio runtime.
    #[error("no tokio runtime to run the consul task on")]
    NoRuntime,
    /// Consul could not be reached, or the request timed out.
    #[error("consul unreachable: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Consul answered with an error status; `message` is the start of its
    /// body (Consul explains errors in plain text).
    #[error("consul answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The start of the response body.
        message: String,
    },
    /// Consul's answer was not the JSON its API documents.
    #[error("unreadable consul answer: {0}")]
    Decode(#[source] serde_json::Error),
    /// Connect certificates from Consul are not usable together (a key
    /// that does not match its leaf, garbage PEM, no root).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("consul connect certificates: {0}")]
    Certificates(#[from] crate::tls::TlsError),
}

impl ConsulError {
    /// The HTTP status Consul answered with, if it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Configures a [`ConsulClient`].
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::client::HttpClientConfig;
/// use tower_gateway::discovery::consul::ConsulClient;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let consul = ConsulClient::builder("https://consul.internal:8501")
///     .token("b1gs33cr3t")
///     .datacenter("dc1")
///     .http(HttpClientConfig::default().connect_timeout(Duration::from_secs(1)))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulClientBuilder {
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    http: HttpClientConfig,
    request_timeout: Duration,
}

impl fmt::Debug for ConsulClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClientBuilder")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl ConsulClientBuilder {
    /// A client of the agent at `address`: `http://host:port`,
    /// `https://host:port`, or `host:port` (taken as `http://`, as
    /// `CONSUL_HTTP_ADDR` is).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            token: None,
            datacenter: None,
            namespace: None,
            partition: None,
            http: HttpClientConfig::default(),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Reads the agent address, token and TLS files the way Consul's own
    /// tools do:
    ///
    /// - `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`) and
    ///   `CONSUL_HTTP_SSL` (`true`: HTTPS for an address without a scheme);
    /// - `CONSUL_HTTP_TOKEN`;
    /// - `CONSUL_CACERT`: a PEM file of CA certificates to verify the agent
    ///   with — then the only roots trusted, as in Consul's Go client;
    /// - `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`: the PEM client
    ///   certificate and key presented to an agent that verifies incoming
    ///   connections (`verify_incoming`), re-read while the gateway runs
    ///   (see [`HttpClientConfig::client_certificate_files`]). Either one
    ///   alone is ignored with a warning;
    /// - `CONSUL_TLS_SERVER_NAME`: the name the agent's certificate is
    ///   verified against (and sent as SNI) instead of the address's host.
    ///
    /// `CONSUL_CAPATH` (a directory of CAs) and `CONSUL_HTTP_SSL_VERIFY`
    /// are not read: pass such CAs with [`HttpClientConfig::add_root_file`];
    /// verification is never turned off.
    ///
    /// Files are read by [`build`](Self::build), which fails if they are
    /// unusable. A later call to [`http`](Self::http) replaces these TLS
    /// settings with its own.
    ///
    /// ```
    /// use tower_gateway::discovery::consul::ConsulClientBuilder;
    ///
    /// // Nothing set: the local agent over plain HTTP.
    /// let consul = ConsulClientBuilder::from_env();
    /// ```
    pub fn from_env() -> Self {
        let mut address =
            std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".to_owned());
        let ssl = std::env::var("CONSUL_HTTP_SSL").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        if ssl && !address.contains("://") {
            address = format!("https://{address}");
        }
        let mut builder = Self::new(address);
        if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN")
            && !token.is_empty()
        {
            builder = builder.token(token);
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(ca) = var("CONSUL_CACERT") {
            builder.http = builder.http.add_root_file(ca).native_roots(false);
        }
        if let Some(name) = var("CONSUL_TLS_SERVER_NAME") {
            builder.http = builder
                .http
                .tls_server_name(name.to_string_lossy().into_owned());
        }
        match (var("CONSUL_CLIENT_CERT"), var("CONSUL_CLIENT_KEY")) {
            (Some(cert), Some(key)) => {
                builder.http = builder.http.client_certificate_files(cert, key);
            }
            (None, None) => {}
            _ => tracing::warn!(
                target: "tower_gateway::consul",
                "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together; no client certificate"
            ),
        }
        builder
    }

    /// The ACL token, sent as `X-Consul-Token` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The datacenter health queries ask about (`dc`); by default the
    /// agent's own. Agent endpoints (registration) are always local.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// The namespace (`ns`, Consul Enterprise) of every request.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// The admin partition (`partition`, Consul Enterprise) of every request.
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// The HTTP client settings: connect timeout, custom CA for an HTTPS
    /// agent, response size limit (raise it for services with many hundreds
    /// of instances). Its request timeout is not used: see
    /// [`request_timeout`](Self::request_timeout).
    pub fn http(mut self, config: HttpClientConfig) -> Self {
        self.http = config;
        self
    }

    /// Time allowed for a request that does not block (default 10 s). A
    /// blocking query is allowed its `wait`, plus the `wait / 16` jitter
    /// Consul may add, plus this.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Builds the client (one connection pool, shared by its watches and
    /// registrations).
    pub fn build(self) -> Result<ConsulClient, ConsulError> {
        let base = normalize_address(&self.address)?;
        let token = match self.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&token).map_err(|_| ConsulError::Token)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(ConsulClient {
            inner: Arc::new(Inner {
                base,
                token,
                datacenter: self.datacenter,
                namespace: self.namespace,
                partition: self.partition,
                fetcher: self.http.build()?,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

fn normalize_address(address: &str) -> Result<String, ConsulError> {
    let trimmed = address.trim().trim_end_matches('/');
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| ConsulError::Address(address.to_owned()))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !scheme_ok || uri.authority().is_none() || !path_ok {
        return Err(ConsulError::Address(address.to_owned()));
    }
    Ok(with_scheme)
}

/// A client of one Consul agent's HTTP API: the starting point for
/// [watching a service](ConsulClient::watch) and
/// [registering one](ConsulClient::register). Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    fetcher: HttpFetcher,
    request_timeout: Duration,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("address", &self.inner.base)
            .field("datacenter", &self.inner.datacenter)
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// A client of the agent at `address` with default settings; see
    /// [`ConsulClientBuilder::new`] for the accepted forms.
    pub fn new(address: impl Into<String>) -> Result<Self, ConsulError> {
        ConsulClientBuilder::new(address).build()
    }

    /// Configures a client of the agent at `address`.
    pub fn builder(address: impl Into<String>) -> ConsulClientBuilder {
        ConsulClientBuilder::new(address)
    }

    /// The agent's base URL.
    pub fn address(&self) -> &str {
        &self.inner.base
    }

    /// Starts configuring a watch of the healthy instances of `service`.
    pub fn watch(&self, service: impl Into<String>) -> ConsulWatchBuilder {
        ConsulWatchBuilder::new(self.clone(), service.into())
    }

    /// Registers a service instance with the agent and, for a TTL check,
    /// keeps the check passing until the returned handle is deregistered
    /// or dropped.
    pub async fn register(
        &self,
        registration: ServiceRegistration,
    ) -> Result<ConsulRegistration, ConsulError> {
        ConsulRegistration::start(self.clone(), registration).await
    }

    /// Starts configuring the Consul Connect certificates of `service`:
    /// its leaf and the CA roots from the agent, kept current.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn connect_certificates(
        &self,
        service: impl Into<String>,
    ) -> super::connect::ConnectCertificatesBuilder {
        super::connect::ConnectCertificatesBuilder::new(self.clone(), service.into())
    }

    pub(super) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub(super) fn datacenter(&self) -> Option<&str> {
        self.inner.datacenter.as_deref()
    }

    /// Adds the tenancy parameters every endpoint takes.
    pub(super) fn tenancy(&self, query: &mut Query) {
        if let Some(ns) = &self.inner.namespace {
            query.push("ns", ns);
        }
        if let Some(partition) = &self.inner.partition {
            query.push("partition", partition);
        }
    }

    /// Sends one request to `path_and_query` (which starts with `/v1/`) and
    /// reads the whole answer within `timeout`.
    pub(super) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Fetched, ConsulError> {
        let url = format!("{}{}", self.inner.base, path_and_query);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.inner.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|_| ConsulError::Address(url.clone()))?;
        self.inner
            .fetcher
            .send(request, timeout)
            .await
            .map_err(|e| ConsulError::Transport(Box::new(e)))
    }

    /// A `PUT` to an agent endpoint that answers 200 with nothing useful.
    pub(super) async fn put(
        &self,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), ConsulError> {
        let fetched = self
            .send(
                Method::PUT,
                path_and_query,
                body,
                self.inner.request_timeout,
            )
            .await?;
        if fetched.status.is_success() {
            Ok(())
        } else {
            Err(status_error(&fetched))
        }
    }
}

/// The error for a non-success answer, keeping the start of Consul's
/// plain-text explanation.
pub(super) fn status_error(fetched: &Fetched) -> ConsulError {
    let text = String::from_utf8_lossy(&fetched.body);
    let message: String = text.trim().chars().take(200).collect();
    ConsulError::Status {
        status: fetched.status,
        message,
    }
}

/// A URL query string built from pairs, percent-encoded.
#[derive(Debug, Default, Clone)]
pub(super) struct Query(String);

impl Query {
    pub(super) fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        encode_into(&mut self.0, key, b"");
        self.0.push('=');
        encode_into(&mut self.0, value, b"");
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Percent-encodes one path segment (RFC 3986 §3.3: `:` and `@` may stay).
pub(super) fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    encode_into(&mut out, segment, b":@");
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters and
/// `keep`.
fn encode_into(out: &mut String, text: &str, keep: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// A duration in the form Go's `time.ParseDuration` reads (`"10s"`,
/// `"1500ms"`), which is how Consul takes every duration.
pub(super) fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// One entry of `/v1/health/service/:service` (Consul HTTP API, Health,
/// "List Service Instances for Service"). Only the fields discovery needs;
/// `Tags` and `Meta` may be `null`.
#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: HealthNode,
    #[serde(rename = "Service")]
    service: HealthService,
}

#[derive(Debug, Deserialize)]
struct HealthNode {
    #[serde(rename = "Node", default)]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Port", default)]
    port: i64,
}

/// Turns a health answer into endpoints keyed by ID.
///
/// The address is `Service.Address`, or `Node.Address` when that is empty
/// (Consul: "If not provided, the agent's address is used"). Service IDs are
/// unique per agent, not per cluster: when two nodes report the same ID,
/// those entries are keyed `node/id` so neither hides the other. Entries
/// with no address or a port outside 1..=65535 cannot be dialled and are
/// left out.
pub(super) fn parse_health(body: &[u8]) -> Result<BTreeMap<String, Endpoint>, ConsulError> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body).map_err(ConsulError::Decode)?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &entries {
        *seen.entry(entry.service.id.as_str()).or_default() += 1;
    }
    let mut endpoints = BTreeMap::new();
    for entry in &entries {
        let service = &entry.service;
        let host = if service.address.is_empty() {
            entry.node.address.as_str()
        } else {
            service.address.as_str()
        };
        let port = u16::try_from(service.port).ok().filter(|p| *p != 0);
        let (Some(port), false) = (port, host.is_empty()) else {
            tracing::warn!(
                target: "tower_gateway::consul",
                id = %service.id, node = %entry.node.name, port = service.port,
                "consul instance without a usable address or port; skipped"
            );
            continue;
        };
        let id = if seen.get(service.id.as_str()).copied().unwrap_or(0) > 1 {
            format!("{}/{}", entry.node.name, service.id)
        } else {
            service.id.clone()
        };
        let endpoint = Endpoint::new(id.as_str(), host, port)
            .with_tags(service.tags.clone().unwrap_or_default())
            .with_meta(service.meta.clone().unwrap_or_default());
        endpoints.insert(id, endpoint);
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_like_consul_http_addr() {
        assert_eq!(
            normalize_address("127.0.0.1:8500").unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            normalize_address("https://consul:8501/").unwrap(),
            "https://consul:8501"
        );
        assert!(normalize_address("unix:///tmp/consul.sock").is_err());
        assert!(normalize_address("http://consul:8500/v1").is_err());
    }

    #[test]
    fn query_and_path_are_percent_encoded() {
        let mut q = Query::default();
        q.push("tag", "a b&c");
        q.push("passing", "true");
        assert_eq!(q.as_str(), "tag=a%20b%26c&passing=true");
        assert_eq!(path_segment("service:web/1"), "service:web%2F1");
    }

    #[test]
    fn durations_are_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(90)), "90s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_nanos(5)), "5ns");
    }

    #[test]
    fn health_answer_falls_back_to_node_address_and_keeps_duplicates_apart() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"web-1","Service":"web","Tags":null,"Address":"","Meta":null,"Port":80},
           "Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"web-1","Service":"web","Tags":["v2"],"Address":"10.9.9.9","Meta":{"az":"b"},"Port":81},
           "Checks":[]},
          {"Node":{"Node":"n3","Address":"10.0.0.3"},
           "Service":{"ID":"web-3","Service":"web","Address":"","Port":0},
           "Checks":[]}
        ]"#;
        let endpoints = parse_health(body).unwrap();
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints["n1/web-1"].authority(), "10.0.0.1:80");
        let second = &endpoints["n2/web-1"];
        assert_eq!(second.authority(), "10.9.9.9:81");
        assert_eq!(second.tags(), ["v2".to_owned()]);
        assert_eq!(second.meta()["az"], "b");
    }

    #[test]
    fn garbage_is_an_error_and_empty_is_empty() {
        assert!(parse_health(b"<html>bad gateway</html>").is_err());
        assert!(parse_health(b"[{\"Node\":").is_err());
        assert!(parse_health(b"[]").unwrap().is_empty());
    }
}
