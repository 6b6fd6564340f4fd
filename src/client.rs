//! The HTTP client the gateway uses for its control plane: JWKS and OIDC
//! discovery documents, Consul's API. One configuration type, so custom CAs
//! and timeouts are set the same way everywhere.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

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
    native_roots: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            extra_roots: Vec::new(),
            native_roots: true,
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

    /// Whether the operating system's trust store is used (default true).
    pub fn native_roots(mut self, yes: bool) -> Self {
        self.native_roots = yes;
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
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(HttpFetcher {
            client: Client::builder(TokioExecutor::new()).build(https),
            request_timeout: self.request_timeout,
            max_body_bytes: self.max_body_bytes,
        })
    }
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
