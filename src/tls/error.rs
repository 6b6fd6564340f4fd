use std::{io, path::PathBuf};

/// Why TLS material could not be loaded or a connection could not be
/// established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A PEM input is malformed (an unterminated or undecodable section).
    #[error("{what}: malformed pem: {source}")]
    Pem {
        /// Which input: `certificate chain`, `private key` or `ca`.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM input holds no certificate.
    #[error("{what}: no certificate in pem")]
    NoCertificate {
        /// Which input: `certificate chain` or `ca`.
        what: &'static str,
    },
    /// The key PEM holds no private key.
    #[error("private key: no key in pem")]
    NoPrivateKey,
    /// rustls refused the material or the configuration (an unparsable
    /// certificate, a key that does not match the certificate, an
    /// unsupported key type).
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate verifier could not be built from the CA certificates.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A server name override is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The TLS handshake failed: the peer presented no certificate, or one
    /// that does not verify against the private CA, or spoke bad TLS.
    #[error("tls handshake refused: {0}")]
    Handshake(rustls::Error),
    /// The handshake did not complete in time.
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    /// The connection failed during the handshake.
    #[error("tls handshake i/o: {0}")]
    Io(#[source] io::Error),
    /// The verified peer certificate could not be read as an identity.
    #[error(transparent)]
    Peer(#[from] super::PeerCertificateError),
}

impl TlsError {
    /// Sorts an error out of `tokio-rustls`: a TLS refusal keeps its
    /// [`rustls::Error`], anything else stays an I/O error.
    pub(crate) fn from_handshake(error: io::Error) -> Self {
        let kind = error.kind();
        match error.into_inner() {
            Some(inner) => match inner.downcast::<rustls::Error>() {
                Ok(tls) => Self::Handshake(*tls),
                Err(other) => Self::Io(io::Error::new(kind, other)),
            },
            None => Self::Io(io::Error::from(kind)),
        }
    }

    /// The TLS-level reason of a refused handshake, if that is what this
    /// error is.
    pub fn handshake_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Handshake(error) => Some(error),
            _ => None,
        }
    }
}
