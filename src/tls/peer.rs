//! Reading the verified peer certificate as a [`PeerIdentity`].

use std::sync::Arc;

use rustls::{ServerConnection, pki_types::CertificateDer};
use sha2::{Digest, Sha256};
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, objects::oid_registry, prelude::FromDer,
};

use crate::identity::PeerIdentity;

/// Why a peer certificate could not be read as an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerCertificateError {
    /// The connection carries no verified client certificate.
    #[error("no peer certificate")]
    Missing,
    /// The certificate is not valid DER X.509.
    #[error("peer certificate: {0}")]
    Malformed(String),
}

/// The identity proven by the client certificate of a finished server
/// handshake: the leaf's subject and its DNS and URI SANs.
///
/// Call it only on connections accepted with client certificates
/// *required and verified* (as [`MtlsAcceptor`](super::MtlsAcceptor) does):
/// rustls reports the certificates it verified, and an unverified
/// certificate proves nothing.
///
/// ```no_run
/// # async fn f(stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
/// let (_, connection) = stream.get_ref();
/// let peer = tower_gateway::tls::peer_identity(connection).unwrap();
/// println!("{} {:?}", peer.subject, peer.sans);
/// # }
/// ```
pub fn peer_identity(connection: &ServerConnection) -> Result<PeerIdentity, PeerCertificateError> {
    let leaf = connection
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or(PeerCertificateError::Missing)?;
    parse_peer_certificate(leaf)
}

/// The verified client certificate of a connection (the leaf, DER), in
/// the extensions of each request on it next to its
/// [`PeerIdentity`] — what [`ForwardClientCertLayer`](super::ForwardClientCertLayer)
/// hashes for `X-Forwarded-Client-Cert`. Cheap to clone.
///
/// ```
/// use tower_gateway::tls::PeerCertificate;
///
/// let cert = PeerCertificate::new(vec![0x30, 0x00]);
/// assert_eq!(cert.der(), [0x30, 0x00]);
/// assert_eq!(cert.sha256_hex().len(), 64);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    inner: Arc<PeerCertificateInner>,
}

#[derive(PartialEq, Eq)]
struct PeerCertificateInner {
    der: Vec<u8>,
    sha256: [u8; 32],
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("sha256", &self.sha256_hex())
            .finish_non_exhaustive()
    }
}

impl PeerCertificate {
    /// The certificate in DER; its SHA-256 digest is computed now, once
    /// per connection.
    pub fn new(der: impl Into<Vec<u8>>) -> Self {
        let der = der.into();
        let sha256 = Sha256::digest(&der).into();
        Self {
            inner: Arc::new(PeerCertificateInner { der, sha256 }),
        }
    }

    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.inner.der
    }

    /// The SHA-256 digest of the DER certificate.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.inner.sha256
    }

    /// The SHA-256 digest as lower-case hex (Envoy's XFCC `Hash`).
    pub fn sha256_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.inner.sha256 {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        out
    }
}

/// Reads a DER certificate as a [`PeerIdentity`]: the subject
/// distinguished name as text (`CN=orders, O=shop`, in certificate order)
/// and the DNS and URI subject alternative names in certificate order
/// (SPIFFE IDs are URI SANs). Other SAN types (IP addresses, e-mail) are
/// not identities a policy should name and are left out.
///
/// This parses; it does not verify. Use it on certificates a verifier
/// accepted.
pub fn parse_peer_certificate(
    certificate: &CertificateDer<'_>,
) -> Result<PeerIdentity, PeerCertificateError> {
    let malformed = |e: &dyn std::fmt::Display| PeerCertificateError::Malformed(e.to_string());
    let (_, cert) = X509Certificate::from_der(certificate.as_ref()).map_err(|e| malformed(&e))?;
    let subject = cert
        .subject()
        .to_string_with_registry(oid_registry())
        .map_err(|e| malformed(&e))?;
    let mut sans = Vec::new();
    if let Some(extension) = cert.subject_alternative_name().map_err(|e| malformed(&e))? {
        for name in &extension.value.general_names {
            if let GeneralName::DNSName(name) | GeneralName::URI(name) = name {
                sans.push((*name).to_owned());
            }
        }
    }
    Ok(PeerIdentity { subject, sans })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            parse_peer_certificate(&der),
            Err(PeerCertificateError::Malformed(_))
        ));
        let empty = CertificateDer::from(Vec::new());
        assert!(parse_peer_certificate(&empty).is_err());
    }

    #[test]
    fn subject_and_dns_and_uri_sans_in_certificate_order() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "FR");
        dn.push(DnType::OrganizationName, "shop");
        dn.push(DnType::CommonName, "orders");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::URI("spiffe://shop/ns/prod/sa/orders".try_into().unwrap()),
            SanType::Rfc822Name("ops@shop.example".try_into().unwrap()),
            SanType::DnsName("orders.internal".try_into().unwrap()),
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let peer = parse_peer_certificate(cert.der()).unwrap();
        assert_eq!(peer.subject, "C=FR, O=shop, CN=orders");
        assert_eq!(
            peer.sans,
            ["spiffe://shop/ns/prod/sa/orders", "orders.internal"]
        );
    }

    #[test]
    fn a_certificate_without_sans_has_a_subject_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let peer = parse_peer_certificate(cert.der()).unwrap();
        assert_eq!(peer.subject, "CN=rcgen self signed cert");
        assert!(peer.sans.is_empty());
    }
}
