//! The client side: presenting a client certificate, trusting only the
//! private CA, and the hyper-util connector built from that.

use std::{sync::Arc, time::Duration};

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
};

use super::{ReloadingCertificates, TlsError};

/// Default time allowed to open the TCP connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How the gateway connects to services over mutual TLS: it presents its
/// client certificate and trusts servers whose certificate chains to the
/// private CA — and only those: no public or system roots.
///
/// Built from a [`ReloadingCertificates`], it follows reloads: each new
/// handshake presents the current certificate and verifies against the
/// current CA. TLS session resumption is off, so a new connection never
/// resumes a session established under a previous certificate.
///
/// Turn it into a connector for hyper-util's pooled client with
/// [`client_connector`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::tls::{self, MtlsClientConfig};
///
/// # fn f(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<(), tower_gateway::tls::TlsError> {
/// let config = MtlsClientConfig::from_pem(chain, key, ca)?
///     .connect_timeout(Duration::from_secs(2));
/// let connector = tls::client_connector(&config);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MtlsClientConfig {
    tls: ClientConfig,
    certs: ReloadingCertificates,
    connect_timeout: Duration,
    allow_plain_http: bool,
    server_name: Option<ServerName<'static>>,
    offer_http2: bool,
}

impl MtlsClientConfig {
    /// Presents the chain and key of `certs` and trusts its CA only.
    pub fn new(certs: &ReloadingCertificates) -> Result<Self, TlsError> {
        let verifier = Arc::new(CurrentCaVerifier {
            certs: certs.clone(),
            expected_uri: None,
        });
        let mut tls = ClientConfig::builder_with_provider(certs.provider().clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            // Not "dangerous": webpki verification against the private CA,
            // read at each handshake so that CA reloads apply.
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(certs.clone()));
        tls.resumption = Resumption::disabled();
        Ok(Self {
            tls,
            certs: certs.clone(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_plain_http: false,
            server_name: None,
            offer_http2: true,
        })
    }

    /// Presents a fixed chain and key (PEM) and trusts the CA in `ca`
    /// (PEM) only.
    pub fn from_pem(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        Self::new(&ReloadingCertificates::from_pem(chain, key, ca)?)
    }

    /// Time allowed to open the TCP connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether `http://` URIs are sent in plain text (default `false`:
    /// they fail, so a mistyped scheme cannot bypass mutual TLS).
    pub fn allow_plain_http(mut self, yes: bool) -> Self {
        self.allow_plain_http = yes;
        self
    }

    /// Whether ALPN offers `h2` besides `http/1.1` (default `true`).
    ///
    /// Turn it off for a reverse proxy to HTTP/1.1 services that also
    /// speak HTTP/2: over HTTP/1.1 each request in flight has a connection
    /// of its own, so a client that stalls its upload or never reads its
    /// download holds that one connection — never a stream slot or a share
    /// of the flow-control window of a connection other clients use.
    /// gRPC upstreams need HTTP/2: keep it on.
    pub fn offer_http2(mut self, yes: bool) -> Self {
        self.offer_http2 = yes;
        self
    }

    /// Verifies every server against `name` rather than the host of the
    /// request URI — for upstreams addressed by IP (from discovery) whose
    /// certificates name a DNS name. `name` is a DNS name or an IP address.
    pub fn server_name(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Verifies servers by a URI SAN instead of a host name: the server's
    /// chain must verify against the private CA (and be valid for server
    /// authentication now), and its leaf must carry `uri` as a URI subject
    /// alternative name. The host of the request URI is not checked.
    ///
    /// This is how Consul Connect peers verify each other: Connect leaf
    /// certificates carry the service's SPIFFE ID
    /// (`spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`) and no
    /// DNS name, and an upstream is dialled by the address discovery gave.
    ///
    /// ```
    /// use tower_gateway::tls::MtlsClientConfig;
    ///
    /// # fn f(config: MtlsClientConfig) {
    /// let config = config.expect_server_uri(
    ///     "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
    /// );
    /// # }
    /// ```
    pub fn expect_server_uri(mut self, uri: impl Into<String>) -> Self {
        let verifier = Arc::new(CurrentCaVerifier {
            certs: self.certs.clone(),
            expected_uri: Some(uri.into()),
        });
        self.tls.dangerous().set_certificate_verifier(verifier);
        self
    }

    /// The rustls configuration: client certificate, private-CA
    /// verification, no ALPN (the connector sets `h2` and `http/1.1`; add
    /// your own when using it with `tokio-rustls` directly).
    pub fn rustls_config(&self) -> &ClientConfig {
        &self.tls
    }
}

/// The connector for hyper-util's pooled client (`hyper_util::client::legacy::Client`)
/// over mutual TLS — **the function a reverse proxy calls** for mTLS
/// upstreams.
///
/// - TLS with the client certificate of `config`, servers verified against
///   the private CA only, the host of each request URI (or
///   [`MtlsClientConfig::server_name`]) checked against the server's SANs;
/// - ALPN offers `h2` and `http/1.1` (only `http/1.1` with
///   [`MtlsClientConfig::offer_http2`] off): the client speaks HTTP/2 to
///   servers that choose it and HTTP/1.1 otherwise (or HTTP/2 always, with
///   `Client::builder(..).http2_only(true)`, as gRPC upstreams need);
/// - `https://` only, unless [`MtlsClientConfig::allow_plain_http`];
/// - TCP: `TCP_NODELAY`, the configured connect timeout.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tower_gateway::tls::{self, MtlsClientConfig};
///
/// # async fn f(config: MtlsClientConfig) -> Result<(), Box<dyn std::error::Error>> {
/// let client: Client<_, Empty<Bytes>> =
///     Client::builder(TokioExecutor::new()).build(tls::client_connector(&config));
/// let response = client.get("https://orders.internal:8443/health".parse()?).await?;
/// # Ok(()) }
/// ```
pub fn client_connector(config: &MtlsClientConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    // The scheme is the TLS layer's business, not the TCP connector's.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    wrap_connector(config, http)
}

/// Like [`client_connector`], over a TCP connector you configured yourself
/// (keep-alive, local address, resolver). It must accept `https` URIs
/// (`HttpConnector::enforce_http(false)`).
pub fn wrap_connector<H>(config: &MtlsClientConfig, http: H) -> HttpsConnector<H> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config.tls.clone());
    let builder = if config.allow_plain_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    let builder = match &config.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let builder = builder.enable_http1();
    if config.offer_http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

/// Verifies servers with webpki against the CA of the current material,
/// by host name, or by URI SAN when `expected_uri` is set.
#[derive(Debug)]
struct CurrentCaVerifier {
    certs: ReloadingCertificates,
    expected_uri: Option<String>,
}

impl ServerCertVerifier for CurrentCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = &self.expected_uri {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.certs.roots(),
                intermediates,
                now,
                self.certs.provider().signature_verification_algorithms.all,
            )?;
            let peer = super::parse_peer_certificate(end_entity).map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
            if !peer.sans.iter().any(|san| san == expected) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
            return Ok(ServerCertVerified::assertion());
        }
        self.certs.server_verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.certs
            .server_verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.certs
            .server_verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.certs.server_verifier().supported_verify_schemes()
    }
}
