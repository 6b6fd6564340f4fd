//! PEM in, rustls pieces out: the certificate chain and key this side
//! presents, and (for mutual TLS) the private CA that the other side must
//! chain to.

use std::sync::Arc;

use rustls::{
    RootCertStore, ServerConfig,
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::{CertifiedKey, SingleCertAndKey},
};

use super::TlsError;

/// The ALPN protocols the server offers: HTTP/2 first, as gRPC needs it
/// (RFC 7540 §3.3), then HTTP/1.1.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One consistent set of TLS material: everything a handshake needs,
/// derived once per (re)load so handshakes only clone `Arc`s.
#[derive(Debug)]
pub(super) struct Material {
    /// The chain and key this side presents (as server or as client).
    pub(super) key: Arc<CertifiedKey>,
    /// The configuration for server handshakes: mandatory client
    /// certificates chaining to the private CA.
    pub(super) server: Arc<ServerConfig>,
    /// The configuration for server handshakes where the client
    /// certificate is optional: verified against the private CA when one
    /// is presented.
    pub(super) server_optional_client: Arc<ServerConfig>,
    /// Verifies servers against the private CA only.
    pub(super) server_verifier: Arc<WebPkiServerVerifier>,
    /// The private CA, for verifiers that check a URI rather than a name.
    pub(super) roots: Arc<RootCertStore>,
}

impl Material {
    /// Parses and checks the three PEM inputs; nothing is kept unless all
    /// of them are usable and the key matches the leaf certificate.
    pub(super) fn from_pem(
        chain: &[u8],
        key: &[u8],
        ca: &[u8],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let chain = certificates(chain, "certificate chain")?;
        let key = private_key(key)?;
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "ca")? {
            roots.add(cert)?;
        }
        let roots = Arc::new(roots);

        let key = Arc::new(CertifiedKey::from_der(chain, key, provider)?);
        // Mandatory: a client without a certificate, or with one that does
        // not chain to the private CA, is refused during the handshake
        // (Express's `requestCert: true, rejectUnauthorized: true`).
        let required =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = server_config(provider, required, &key)?;
        // Optional: a certificate is asked for; none is fine, but one that
        // is presented must chain to the private CA. RFC 8446 §4.4.2.4
        // lets the server either continue unauthenticated or abort on an
        // unacceptable chain: aborting means a client that tried to prove
        // who it is never passes silently as anonymous.
        let optional = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let server_optional_client = server_config(provider, optional, &key)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Self {
            key,
            server,
            server_optional_client,
            server_verifier,
            roots,
        })
    }
}

/// The TLS material of a server that asks for no client certificate: its
/// chain and key only, derived once per (re)load.
#[derive(Debug)]
pub(super) struct ServerMaterial {
    /// The chain and key the server presents.
    pub(super) key: Arc<CertifiedKey>,
    /// The configuration for server handshakes: no client certificate.
    pub(super) server: Arc<ServerConfig>,
}

impl ServerMaterial {
    /// Parses and checks the chain and key; nothing is kept unless both
    /// are usable and the key matches the leaf certificate.
    pub(super) fn from_pem(
        chain: &[u8],
        key: &[u8],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let chain = certificates(chain, "certificate chain")?;
        let key = private_key(key)?;
        let key = Arc::new(CertifiedKey::from_der(chain, key, provider)?);
        let server = server_config(provider, WebPkiClientVerifier::no_client_auth(), &key)?;
        Ok(Self { key, server })
    }
}

/// A server configuration presenting `key`, checking client certificates
/// with `client_verifier`, offering HTTP/2 and HTTP/1.1.
fn server_config(
    provider: &Arc<CryptoProvider>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    key: &Arc<CertifiedKey>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
    server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

/// Every certificate in `pem`; at least one, and no malformed section.
fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
        source => TlsError::Pem {
            what: "private key",
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn garbage_is_refused_with_the_input_named() {
        let p = provider();
        let err = Material::from_pem(b"garbage", b"garbage", b"garbage", &p).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NoCertificate {
                    what: "certificate chain"
                }
            ),
            "{err}"
        );
        let truncated = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let err = certificates(truncated, "ca").unwrap_err();
        assert!(matches!(err, TlsError::Pem { what: "ca", .. }), "{err}");
        assert!(matches!(
            private_key(b"nothing"),
            Err(TlsError::NoPrivateKey)
        ));
    }
}
