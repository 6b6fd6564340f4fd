//! The client certificate the control-plane client presents: read from
//! PEM files, re-read while the gateway runs, swapped for the next
//! handshake.
//!
//! This is deliberately smaller than `tls::ReloadingCertificates`: the
//! control-plane client needs a chain and a key, not a private CA (servers
//! are verified against the roots of [`HttpClientConfig`](super::HttpClientConfig)),
//! and the `client` feature must not pull in the server side of the `tls`
//! feature (tokio-rustls, x509-parser, hyper's server).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use tokio::time::MissedTickBehavior;

use super::HttpClientError;

/// The chain and key files of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientCertificateFiles {
    pub(super) chain: PathBuf,
    pub(super) key: PathBuf,
}

/// Both files' bytes, compared whole (a rewrite within the file system's
/// timestamp granularity would fool a metadata check).
#[derive(Clone, PartialEq, Eq)]
struct Contents {
    chain: Vec<u8>,
    key: Vec<u8>,
}

impl ClientCertificateFiles {
    fn read(&self) -> Result<Contents, HttpClientError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| HttpClientError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Contents {
            chain: read(&self.chain)?,
            key: read(&self.key)?,
        })
    }
}

/// Resolves the client certificate from files, polled by a background
/// task that starts with the first handshake (so that building a client
/// needs no runtime) and ends with the last handle.
pub(super) struct FileClientCertificate {
    shared: Arc<Shared>,
}

struct Shared {
    files: ClientCertificateFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the last read saw (contents or the error's text), so that a
    /// bad file is reported once rather than at every poll.
    seen: Mutex<Result<Contents, String>>,
    every: Duration,
    poller_started: AtomicBool,
}

impl fmt::Debug for FileClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileClientCertificate")
            .field("files", &self.shared.files)
            .field("every", &self.shared.every)
            .finish_non_exhaustive()
    }
}

impl FileClientCertificate {
    /// Loads the files now (blocking reads, at start-up); fails unless the
    /// key matches the leaf certificate.
    pub(super) fn load(
        files: ClientCertificateFiles,
        every: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HttpClientError> {
        let contents = files.read()?;
        let key = certified_key(&contents, &provider)?;
        Ok(Self {
            shared: Arc::new(Shared {
                files,
                provider,
                current: RwLock::new(key),
                seen: Mutex::new(Ok(contents)),
                every: every.max(Duration::from_millis(1)),
                poller_started: AtomicBool::new(false),
            }),
        })
    }

    fn start_poller(&self) {
        if self.shared.poller_started.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(poll(Arc::downgrade(&self.shared)));
            }
            // Handshakes run inside the runtime that drives the client;
            // outside one, try again at the next handshake.
            Err(_) => self.shared.poller_started.store(false, Ordering::Release),
        }
    }
}

impl ResolvesClientCert for FileClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.start_poller();
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Some(current.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Shared {
    /// Re-reads the files and swaps in new, usable material; anything else
    /// keeps the current certificate and is logged once.
    fn poll(&self) {
        let read = self.files.read();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = read.as_ref().map(Clone::clone).map_err(|e| e.to_string());
        if now == *seen {
            return;
        }
        *seen = now;
        let outcome = read.and_then(|contents| certified_key(&contents, &self.provider));
        match outcome {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
                tracing::info!(
                    target: "tower_gateway::client",
                    chain = %self.files.chain.display(),
                    "control-plane client certificate reloaded"
                );
            }
            Err(error) => tracing::error!(
                target: "tower_gateway::client",
                %error,
                chain = %self.files.chain.display(),
                "control-plane client certificate reload failed; keeping the current one"
            ),
        }
    }
}

async fn poll(shared: Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.every) else {
        return;
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // File reads block: keep them off the async worker threads.
        if let Err(error) = tokio::task::spawn_blocking(move || shared.poll()).await {
            tracing::error!(target: "tower_gateway::client", %error, "client certificate poll failed");
        }
    }
}

fn certified_key(
    contents: &Contents,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<CertifiedKey>, HttpClientError> {
    let chain = CertificateDer::pem_slice_iter(&contents.chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HttpClientError::Pem {
            what: "client certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(HttpClientError::NoClientCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => HttpClientError::NoPrivateKey,
        source => HttpClientError::Pem {
            what: "client key",
            source,
        },
    })?;
    // Refuses a key that does not match the leaf.
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}
