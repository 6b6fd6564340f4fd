//! The HTTP client the gateway uses for its control plane: JWKS and OIDC
//! discovery documents, Consul's API. One configuration type, so custom CAs
//! and timeouts are set the same way everywhere.
//!
//! The client can present a client certificate — mutual TLS to a Consul
//! agent with `verify_incoming`, or to an auth server that requires it —
//! from PEM files it re-reads while the gateway runs
//! ([`HttpClientConfig::client_certificate_files`]), or from any rustls
//! resolver ([`HttpClientConfig::client_certificate_resolver`]), such as
//! a `tls::ReloadingCertificates` or a Consul Connect leaf.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::client::HttpClientConfig;
//!
//! // Files are read when a client is built from this configuration
//! // (`ConsulClientBuilder::http`, `JwtAuthBuilder::http_client`).
//! let http = HttpClientConfig::default()
//!     .add_root_file("/etc/consul.d/consul-agent-ca.pem")
//!     .native_roots(false)
//!     .client_certificate_files(
//!         "/etc/consul.d/dc1-client-consul-0.pem",
//!         "/etc/consul.d/dc1-client-consul-0-key.pem",
//!     )
//!     .client_certificate_reload_interval(Duration::from_secs(30));
//! ```

// The client is built only by its users (JWKS, Consul); with the
// `client` feature alone, nothing calls it.
#![cfg_attr(not(any(feature = "jwks", feature = "consul")), allow(dead_code))]

mod identity;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    client::ResolvesClientCert,
    pki_types::{CertificateDer, pem::PemObject},
};

use identity::{ClientCertificateFiles, FileClientCertificate};

/// How often client certificate files are re-read by default.
const DEFAULT_CERT_RELOAD: Duration = Duration::from_secs(10);

/// How the gateway talks to its control plane (auth server, Consul).
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::client::HttpClientConfig;
///
/// let cfg = HttpClientConfig::default()
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    connect_timeout: Duration,
    request_timeout: Duration,
    max_body_bytes: usize,
    extra_roots: Vec<CertificateDer<'static>>,
    root_files: Vec<PathBuf>,
    native_roots: bool,
    client_cert: Option<ClientCertificate>,
    client_cert_reload: Duration,
    server_name: Option<String>,
}

/// Where the client certificate comes from.
#[derive(Debug, Clone)]
enum ClientCertificate {
    Files(ClientCertificateFiles),
    Resolver(Arc<dyn ResolvesClientCert>),
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            extra_roots: Vec::new(),
            root_files: Vec::new(),
            native_roots: true,
            client_cert: None,
            client_cert_reload: DEFAULT_CERT_RELOAD,
            server_name: None,
        }
    }
}

/// A client configuration that could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The CA PEM holds no usable certificate.
    #[error("no certificate in CA PEM")]
    NoCertificate,
    /// A CA or client certificate file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM input is malformed (an unterminated or undecodable section).
    #[error("{what}: malformed pem: {source}")]
    Pem {
        /// Which input: `ca`, `client certificate` or `client key`.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The client certificate file holds no certificate.
    #[error("client certificate: no certificate in pem")]
    NoClientCertificate,
    /// The client key file holds no private key.
    #[error("client key: no key in pem")]
    NoPrivateKey,
    /// The TLS server name override is not a DNS name or IP address.
    #[error("invalid tls server name {0:?}")]
    ServerName(String),
    /// The TLS configuration was refused by rustls.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl HttpClientConfig {
    /// Time allowed for the TCP (and TLS) connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for a whole request, body included (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Largest response body accepted (default 1 MiB); a bigger JWKS is
    /// treated as garbage.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Trusts the CA certificates in `pem` (for a private auth server).
    pub fn add_root_pem(mut self, pem: &[u8]) -> Result<Self, HttpClientError> {
        let before = self.extra_roots.len();
        for cert in CertificateDer::pem_slice_iter(pem).flatten() {
            self.extra_roots.push(cert);
        }
        if self.extra_roots.len() == before {
            return Err(HttpClientError::NoCertificate);
        }
        Ok(self)
    }

    /// Trusts the CA certificates in the PEM file at `path`, read when the
    /// client is built (Consul's `CONSUL_CACERT`). Combine with
    /// [`native_roots(false)`](Self::native_roots) to trust that CA only.
    ///
    /// ```
    /// use tower_gateway::client::HttpClientConfig;
    ///
    /// let cfg = HttpClientConfig::default()
    ///     .add_root_file("/etc/consul.d/consul-agent-ca.pem")
    ///     .native_roots(false);
    /// ```
    pub fn add_root_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_files.push(path.into());
        self
    }

    /// Whether the operating system's trust store is used (default true).
    pub fn native_roots(mut self, yes: bool) -> Self {
        self.native_roots = yes;
        self
    }

    /// Presents the client certificate in the PEM file `chain` (leaf
    /// first) with the private key in `key` (PKCS#8, PKCS#1 or SEC1) to
    /// servers that ask for one — Consul's `CONSUL_CLIENT_CERT` and
    /// `CONSUL_CLIENT_KEY`.
    ///
    /// The files are read when the client is built (which fails if the
    /// key does not match the certificate), then re-read every
    /// [`client_certificate_reload_interval`](Self::client_certificate_reload_interval)
    /// on a background task that starts with the first handshake and ends
    /// with the client. New, usable contents apply to the next handshake;
    /// a half-written or mismatched pair keeps the current certificate and
    /// logs an error. Pooled connections keep the certificate they were
    /// established with.
    ///
    /// ```
    /// use tower_gateway::client::HttpClientConfig;
    ///
    /// let cfg = HttpClientConfig::default()
    ///     .client_certificate_files("/etc/gateway/consul.crt", "/etc/gateway/consul.key");
    /// ```
    pub fn client_certificate_files(
        mut self,
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(ClientCertificate::Files(ClientCertificateFiles {
            chain: chain.into(),
            key: key.into(),
        }));
        self
    }

    /// How often the files of
    /// [`client_certificate_files`](Self::client_certificate_files) are
    /// re-read (default 10 s, at least 1 ms).
    pub fn client_certificate_reload_interval(mut self, every: Duration) -> Self {
        self.client_cert_reload = every;
        self
    }

    /// Verifies every server's certificate against `name` (a DNS name or
    /// IP address) rather than the host of the URL, and sends it as SNI —
    /// Consul's `CONSUL_TLS_SERVER_NAME`, for an agent reached by an
    /// address its certificate does not name. Checked when the client is
    /// built.
    ///
    /// ```
    /// use tower_gateway::client::HttpClientConfig;
    ///
    /// let cfg = HttpClientConfig::default().tls_server_name("server.dc1.consul");
    /// ```
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Presents the client certificate `resolver` picks at each handshake:
    /// a `tls::ReloadingCertificates` (with the `tls` feature), a Consul
    /// Connect leaf, or a resolver of your own.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rustls::client::ResolvesClientCert;
    /// use tower_gateway::client::HttpClientConfig;
    ///
    /// # fn f(resolver: Arc<dyn ResolvesClientCert>) {
    /// let cfg = HttpClientConfig::default().client_certificate_resolver(resolver);
    /// # }
    /// ```
    pub fn client_certificate_resolver(mut self, resolver: Arc<dyn ResolvesClientCert>) -> Self {
        self.client_cert = Some(ClientCertificate::Resolver(resolver));
        self
    }

    pub(crate) fn build(&self) -> Result<HttpFetcher, HttpClientError> {
        let mut roots = rustls::RootCertStore::empty();
        if self.native_roots {
            // A machine without a trust store still works with explicit roots.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        for cert in &self.extra_roots {
            roots.add(cert.clone())?;
        }
        for path in &self.root_files {
            for cert in read_roots(path)? {
                roots.add(cert)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut tls = match &self.client_cert {
            None => tls.with_no_client_auth(),
            Some(ClientCertificate::Resolver(resolver)) => {
                tls.with_client_cert_resolver(resolver.clone())
            }
            Some(ClientCertificate::Files(files)) => {
                let resolver =
                    FileClientCertificate::load(files.clone(), self.client_cert_reload, provider)?;
                tls.with_client_cert_resolver(Arc::new(resolver))
            }
        };
        if self.client_cert.is_some() {
            // A resumed session keeps the identity it was established
            // with: a rotated certificate would never be presented.
            tls.resumption = rustls::client::Resumption::disabled();
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| HttpClientError::ServerName(name.clone()))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let https = builder.enable_http1().enable_http2().wrap_connector(http);
        Ok(HttpFetcher {
            client: Client::builder(TokioExecutor::new()).build(https),
            request_timeout: self.request_timeout,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

/// The certificates of a CA file: at least one, no malformed section.
fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpClientError> {
    let pem = std::fs::read(path).map_err(|source| HttpClientError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HttpClientError::Pem { what: "ca", source })?;
    if certs.is_empty() {
        return Err(HttpClientError::NoCertificate);
    }
    Ok(certs)
}

/// Why a control-plane request failed; logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
pub(crate) enum FetchError {
    #[error("invalid url {0:?}")]
    Url(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
    #[error("unexpected status {0}")]
    Status(StatusCode),
    #[error("body: {0}")]
    Body(String),
}

/// A pooled HTTP/1.1 + HTTP/2 client over rustls (or plain TCP for
/// `http://` URLs), with a size limit on response bodies.
#[derive(Clone)]
pub(crate) struct HttpFetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    // Used by `get` (JWKS); Consul passes its own timeouts to `send`.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    request_timeout: Duration,
    max_body_bytes: usize,
}

/// A response whose body was read in full.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    // Read by clients that need response headers (Consul's `X-Consul-Index`).
    #[allow(dead_code)]
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl HttpFetcher {
    /// GETs `url` and returns the body of a 200 response.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Url(e.to_string()))?;
        let fetched = self.send(request, self.request_timeout).await?;
        if fetched.status != StatusCode::OK {
            return Err(FetchError::Status(fetched.status));
        }
        Ok(fetched.body)
    }

    /// Sends any request and reads the whole response within `timeout`
    /// (which may be longer than the default, as Consul's blocking queries
    /// need); the status is not checked.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Request(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body_bytes)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?;
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}
