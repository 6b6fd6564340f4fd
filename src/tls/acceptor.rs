//! Server handshakes: client certificates required and verified
//! ([`MtlsAcceptor`]), or not asked for, or optional but verified when
//! presented ([`TlsAcceptor`]); the peer's identity read from the verified
//! chain.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::{
    PeerCertificate, PeerCertificateError, PeerIdentityLayer, PeerRoles, ReloadingCertificates,
    ReloadingServerCertificate, TlsError, parse_peer_certificate,
};
use crate::identity::{Identity, PeerIdentity};

/// Accepts TLS connections whose client presents a certificate that
/// chains to the private CA — and no others: a client without a
/// certificate, with one from another CA, or with an expired one fails the
/// handshake.
///
/// Each handshake uses the current material of its
/// [`ReloadingCertificates`], so a reload applies to the next connection.
/// Cheap to clone.
///
/// ```no_run
/// use tokio::net::TcpListener;
/// use tower_gateway::tls::MtlsAcceptor;
///
/// # async fn f(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// let acceptor = MtlsAcceptor::from_pem(chain, key, ca)?;
/// let listener = TcpListener::bind("127.0.0.1:8443").await?;
/// let (tcp, _) = listener.accept().await?;
/// let accepted = acceptor.accept(tcp).await?;
/// println!("{:?}", accepted.peer());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MtlsAcceptor {
    certs: ReloadingCertificates,
    roles: Arc<PeerRoles>,
}

impl MtlsAcceptor {
    /// Serves `certs` (the server's chain and key, and the private CA
    /// that client certificates must chain to).
    pub fn new(certs: &ReloadingCertificates) -> Self {
        Self {
            certs: certs.clone(),
            roles: Arc::new(PeerRoles::new()),
        }
    }

    /// Serves fixed PEM material: the server's chain and key, and the
    /// private CA.
    pub fn from_pem(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        Ok(Self::new(&ReloadingCertificates::from_pem(chain, key, ca)?))
    }

    /// Grants roles to certificate identities (see [`PeerRoles`]); the
    /// default grants none.
    pub fn peer_roles(mut self, roles: PeerRoles) -> Self {
        self.roles = Arc::new(roles);
        self
    }

    /// The certificates this acceptor serves.
    pub fn certificates(&self) -> &ReloadingCertificates {
        &self.certs
    }

    /// The configuration the next handshake will use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.certs.server_config()
    }

    /// Runs the server handshake on `io` and reads the verified client
    /// certificate. No timeout is applied: wrap the call in
    /// `tokio::time::timeout` ([`serve`](super::serve) does).
    pub async fn accept<IO>(&self, io: IO) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = handshake(self.server_config(), io).await?;
        let verified =
            VerifiedPeer::read(&stream, &self.roles)?.ok_or(PeerCertificateError::Missing)?;
        Ok(Accepted { stream, verified })
    }
}

/// A connection whose client certificate was verified: the TLS stream
/// and the caller's [`Identity`].
#[derive(Debug)]
pub struct Accepted<IO> {
    stream: TlsStream<IO>,
    verified: VerifiedPeer,
}

impl<IO> Accepted<IO> {
    /// The verified caller, with the roles of the acceptor's [`PeerRoles`].
    pub fn identity(&self) -> &Identity {
        &self.verified.identity
    }

    /// The verified client certificate's subject and SANs.
    pub fn peer(&self) -> &PeerIdentity {
        &self.verified.peer
    }

    /// The verified client certificate.
    pub fn certificate(&self) -> &PeerCertificate {
        &self.verified.certificate
    }

    /// The layer that puts this connection's identity (and its
    /// [`PeerCertificate`]) into each of its requests; wrap the
    /// connection's service in it.
    pub fn layer(&self) -> PeerIdentityLayer {
        self.verified.clone().into_layer()
    }

    /// The TLS stream.
    pub fn stream(&self) -> &TlsStream<IO> {
        &self.stream
    }

    /// The stream and the identity layer, to serve the connection.
    pub fn into_parts(self) -> (TlsStream<IO>, PeerIdentityLayer) {
        (self.stream, self.verified.into_layer())
    }
}

/// Accepts TLS connections with the server's certificate, for clients
/// that are not known in advance — a public HTTPS listener. By default no
/// client certificate is asked for; with
/// [`with_optional_client_certificates`](Self::with_optional_client_certificates)
/// one is asked for but not required: a client that presents one must
/// chain to the private CA (or the handshake fails), and its identity then
/// reaches every request as with [`MtlsAcceptor`]; a client that presents
/// none is served anonymously.
///
/// ALPN offers `h2` and `http/1.1`. Each handshake uses the current
/// material, so a reload applies to the next connection. Cheap to clone.
/// (Not `tokio_rustls::TlsAcceptor`, which it uses.)
///
/// ```
/// use axum::{Router, routing::get};
/// use tokio::net::TcpListener;
/// use tower_gateway::{server, tls::TlsAcceptor};
///
/// # fn pem() -> (String, String) {
/// #     let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
/// #     (cert.cert.pem(), cert.signing_key.serialize_pem())
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (chain, key) = pem();
/// // The server's certificate chain and key, e.g. from an ACME client.
/// let acceptor = TlsAcceptor::from_pem(chain.as_bytes(), key.as_bytes())?;
/// let app = Router::new().route("/", get(|| async { "hello over https" }));
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// tokio::spawn(server::serve(listener, app).tls(acceptor).into_future());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    client_auth: ClientAuth,
    roles: Arc<PeerRoles>,
}

/// What a [`TlsAcceptor`] asks of clients, with the material it serves.
#[derive(Debug, Clone)]
enum ClientAuth {
    /// No client certificate asked for.
    None(ReloadingServerCertificate),
    /// A client certificate asked for, verified against the CA when
    /// presented.
    Optional(ReloadingCertificates),
}

impl TlsAcceptor {
    /// Serves `certificate`, asking for no client certificate.
    pub fn new(certificate: &ReloadingServerCertificate) -> Self {
        Self {
            client_auth: ClientAuth::None(certificate.clone()),
            roles: Arc::new(PeerRoles::new()),
        }
    }

    /// Serves a fixed certificate chain (PEM, leaf first) and key, asking
    /// for no client certificate.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Ok(Self::new(&ReloadingServerCertificate::from_pem(
            chain, key,
        )?))
    }

    /// Serves the chain and key of `certs` and asks for a client
    /// certificate without requiring one: a presented certificate must
    /// chain to the CA of `certs` (another CA, or an expired certificate,
    /// fails the handshake) and becomes the connection's
    /// [`Identity`] and [`PeerIdentity`]; a client without one is served
    /// with neither.
    ///
    /// ```
    /// use tower_gateway::tls::{PeerRoles, ReloadingCertificates, TlsAcceptor};
    ///
    /// # fn pem() -> (String, String, String) {
    /// #     use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    /// #     let mut ca = CertificateParams::default();
    /// #     ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    /// #     let ca_key = KeyPair::generate().unwrap();
    /// #     let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    /// #     let key = KeyPair::generate().unwrap();
    /// #     let leaf = CertificateParams::new(vec!["localhost".into()]).unwrap();
    /// #     let chain = leaf.signed_by(&key, &Issuer::new(ca, ca_key)).unwrap().pem();
    /// #     (chain, key.serialize_pem(), ca_pem)
    /// # }
    /// # fn main() -> Result<(), tower_gateway::tls::TlsError> {
    /// # let (chain, key, partner_ca) = pem();
    /// // Partners may present a certificate from their CA; everyone else
    /// // is anonymous.
    /// let certs =
    ///     ReloadingCertificates::from_pem(chain.as_bytes(), key.as_bytes(), partner_ca.as_bytes())?;
    /// let acceptor = TlsAcceptor::with_optional_client_certificates(&certs)
    ///     .peer_roles(PeerRoles::new().san_prefix("spiffe://partners/", ["partner"]));
    /// assert!(acceptor.asks_for_client_certificates());
    /// # Ok(()) }
    /// ```
    pub fn with_optional_client_certificates(certs: &ReloadingCertificates) -> Self {
        Self {
            client_auth: ClientAuth::Optional(certs.clone()),
            roles: Arc::new(PeerRoles::new()),
        }
    }

    /// Grants roles to verified client certificates (see [`PeerRoles`]);
    /// the default grants none. Without optional client certificates
    /// there is nothing to grant roles to.
    pub fn peer_roles(mut self, roles: PeerRoles) -> Self {
        self.roles = Arc::new(roles);
        self
    }

    /// Whether a client certificate is asked for (and verified when
    /// presented).
    pub fn asks_for_client_certificates(&self) -> bool {
        matches!(self.client_auth, ClientAuth::Optional(_))
    }

    /// The configuration the next handshake will use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        match &self.client_auth {
            ClientAuth::None(certificate) => certificate.server_config(),
            ClientAuth::Optional(certs) => certs.server_config_optional_client(),
        }
    }

    /// Runs the server handshake on `io` and reads the verified client
    /// certificate, if one was presented. No timeout is applied: wrap the
    /// call in `tokio::time::timeout` ([`serve`](super::serve) does).
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsAccepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = handshake(self.server_config(), io).await?;
        let verified = match self.client_auth {
            ClientAuth::None(_) => None,
            ClientAuth::Optional(_) => VerifiedPeer::read(&stream, &self.roles)?,
        };
        Ok(TlsAccepted { stream, verified })
    }
}

/// A connection accepted by [`TlsAcceptor`]: the TLS stream and, if the
/// client presented a certificate that was verified, its [`Identity`].
#[derive(Debug)]
pub struct TlsAccepted<IO> {
    stream: TlsStream<IO>,
    verified: Option<VerifiedPeer>,
}

impl<IO> TlsAccepted<IO> {
    /// The verified caller, with the roles of the acceptor's
    /// [`PeerRoles`]; `None` for an anonymous client.
    pub fn identity(&self) -> Option<&Identity> {
        self.verified.as_ref().map(|v| &v.identity)
    }

    /// The verified client certificate's subject and SANs; `None` for an
    /// anonymous client.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.verified.as_ref().map(|v| &v.peer)
    }

    /// The verified client certificate; `None` for an anonymous client.
    pub fn certificate(&self) -> Option<&PeerCertificate> {
        self.verified.as_ref().map(|v| &v.certificate)
    }

    /// The layer that puts the verified identity into each request of the
    /// connection; `None` for an anonymous client, whose requests carry
    /// no identity.
    pub fn layer(&self) -> Option<PeerIdentityLayer> {
        self.verified.clone().map(VerifiedPeer::into_layer)
    }

    /// The TLS stream.
    pub fn stream(&self) -> &TlsStream<IO> {
        &self.stream
    }

    /// The stream and, for a verified client, the identity layer.
    pub fn into_parts(self) -> (TlsStream<IO>, Option<PeerIdentityLayer>) {
        (self.stream, self.verified.map(VerifiedPeer::into_layer))
    }
}

/// The server handshake with `config`.
async fn handshake<IO>(config: Arc<ServerConfig>, io: IO) -> Result<TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(TlsError::from_handshake)
}

/// What a verified client certificate proves.
#[derive(Debug, Clone)]
struct VerifiedPeer {
    peer: PeerIdentity,
    identity: Identity,
    certificate: PeerCertificate,
}

impl VerifiedPeer {
    /// The client certificate of a finished handshake, if there is one.
    /// rustls reports only certificates its verifier accepted: with
    /// client certificates asked for, a presented one was verified.
    fn read<IO>(stream: &TlsStream<IO>, roles: &PeerRoles) -> Result<Option<Self>, TlsError> {
        let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
        else {
            return Ok(None);
        };
        let peer = parse_peer_certificate(leaf)?;
        Ok(Some(Self {
            identity: roles.identity(peer.clone()),
            certificate: PeerCertificate::new(leaf.as_ref()),
            peer,
        }))
    }

    fn into_layer(self) -> PeerIdentityLayer {
        PeerIdentityLayer::new(self.identity).certificate(self.certificate)
    }
}
