//! Server handshakes: client certificates required and verified, the
//! peer's identity read from the verified chain.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::{
    PeerCertificate, PeerCertificateError, PeerIdentityLayer, PeerRoles, ReloadingCertificates,
    TlsError, peer_identity,
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
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        let stream = acceptor
            .accept(io)
            .await
            .map_err(TlsError::from_handshake)?;
        let connection = stream.get_ref().1;
        let peer = peer_identity(connection)?;
        let certificate = connection
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(|leaf| PeerCertificate::new(leaf.as_ref()))
            .ok_or(PeerCertificateError::Missing)?;
        let identity = self.roles.identity(peer.clone());
        Ok(Accepted {
            stream,
            peer,
            identity,
            certificate,
        })
    }
}

/// A connection whose client certificate was verified: the TLS stream
/// and the caller's [`Identity`].
#[derive(Debug)]
pub struct Accepted<IO> {
    stream: TlsStream<IO>,
    peer: PeerIdentity,
    identity: Identity,
    certificate: PeerCertificate,
}

impl<IO> Accepted<IO> {
    /// The verified caller, with the roles of the acceptor's [`PeerRoles`].
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The verified client certificate's subject and SANs.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The verified client certificate.
    pub fn certificate(&self) -> &PeerCertificate {
        &self.certificate
    }

    /// The layer that puts this connection's identity (and its
    /// [`PeerCertificate`]) into each of its requests; wrap the
    /// connection's service in it.
    pub fn layer(&self) -> PeerIdentityLayer {
        PeerIdentityLayer::new(self.identity.clone()).certificate(self.certificate.clone())
    }

    /// The TLS stream.
    pub fn stream(&self) -> &TlsStream<IO> {
        &self.stream
    }

    /// The stream and the identity layer, to serve the connection.
    pub fn into_parts(self) -> (TlsStream<IO>, PeerIdentityLayer) {
        let layer = PeerIdentityLayer::new(self.identity).certificate(self.certificate);
        (self.stream, layer)
    }
}
