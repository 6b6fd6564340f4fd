//! Certificates that change while the gateway runs: loaded from files,
//! polled, and swapped atomically for the next handshake.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig, SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    pki_types::CertificateDer,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{sync::watch, task::JoinHandle, time::MissedTickBehavior};

use super::{
    TlsError,
    material::{Material, ServerMaterial},
};

/// Where the PEM files of one TLS identity live: the certificate chain
/// (leaf first), its private key, and the private CA the other side must
/// chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    chain: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl CertificateFiles {
    /// The chain, key and CA bundle paths.
    pub fn new(chain: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self {
            chain: chain.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// The certificate chain (PEM, leaf first).
    pub fn chain(&self) -> &Path {
        &self.chain
    }

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The private CA certificates (PEM).
    pub fn ca(&self) -> &Path {
        &self.ca
    }
}

/// The files a reloading source reads: [`CertificateFiles`], or a server
/// certificate's chain and key without a CA.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Paths {
    chain: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

impl From<CertificateFiles> for Paths {
    fn from(files: CertificateFiles) -> Self {
        Self {
            chain: files.chain,
            key: files.key,
            ca: Some(files.ca),
        }
    }
}

impl Paths {
    fn read(&self) -> Result<Contents, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Contents {
            chain: read(&self.chain)?,
            key: read(&self.key)?,
            ca: self.ca.as_deref().map(read).transpose()?,
        })
    }
}

/// The bytes of the files, compared whole: PEM files are a few KiB, and
/// metadata alone misses a rewrite within the file system's timestamp
/// granularity.
#[derive(Clone, PartialEq, Eq)]
struct Contents {
    chain: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

/// What a reloading source turns its PEM contents into, once per load.
trait Load: Sized + Send + Sync + 'static {
    fn load(contents: &Contents, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError>;
}

impl Load for Material {
    fn load(contents: &Contents, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        // Every way of building a `ReloadingCertificates` reads a CA; an
        // empty one would be refused as "ca: no certificate in pem".
        let ca = contents.ca.as_deref().unwrap_or_default();
        Material::from_pem(&contents.chain, &contents.key, ca, provider)
    }
}

impl Load for ServerMaterial {
    fn load(contents: &Contents, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        ServerMaterial::from_pem(&contents.chain, &contents.key, provider)
    }
}

/// How reloading went so far; see [`ReloadingCertificates::subscribe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStatus {
    /// New material that was loaded and is in use (the initial load is not
    /// counted).
    pub reloads: u64,
    /// Attempts that failed and left the previous material in use:
    /// unreadable files, garbage PEM, a key that does not match the
    /// certificate.
    pub failures: u64,
}

/// The TLS identity of the gateway — a certificate chain, its key and the
/// private CA — swapped atomically when it changes, without a restart.
///
/// Both sides read it at every handshake:
/// [`MtlsAcceptor`](super::MtlsAcceptor) takes the current
/// [`ServerConfig`] (certificate *and* CA) per handshake, and
/// [`MtlsClientConfig`](super::MtlsClientConfig) resolves its client
/// certificate ([`ResolvesClientCert`]) and verifies servers against the
/// current CA. It also implements [`ResolvesServerCert`], for a
/// `ServerConfig` built elsewhere. A server that asks for no client
/// certificate needs no CA: see [`ReloadingServerCertificate`].
///
/// Material loaded from files is polled by [`watch`](Self::watch): when any
/// of the three files changes, all three are parsed together and swapped
/// in only if they are usable together (the key must match the
/// certificate). Anything else — a half-written file, garbage PEM — keeps
/// the current material and logs an error; the next change is tried
/// again. Replace files atomically (write, then rename) where you can.
///
/// Existing connections keep the identity they were established with; the
/// new material applies to new handshakes.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::tls::{CertificateFiles, ReloadingCertificates};
///
/// # #[tokio::main] async fn main() -> Result<(), tower_gateway::tls::TlsError> {
/// let certs = ReloadingCertificates::from_files(CertificateFiles::new(
///     "/etc/gateway/tls.crt",
///     "/etc/gateway/tls.key",
///     "/etc/gateway/ca.crt",
/// ))?;
/// let _poller = certs.watch(Duration::from_secs(10));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingCertificates {
    shared: Arc<Shared<Material>>,
}

impl fmt::Debug for ReloadingCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.debug("ReloadingCertificates", f)
    }
}

impl ReloadingCertificates {
    /// Loads the three files now (blocking file reads: call it at start-up
    /// or from a blocking context). Fails if they are not usable; after
    /// that, bad files never replace good material.
    pub fn from_files(files: CertificateFiles) -> Result<Self, TlsError> {
        Ok(Self {
            shared: Shared::from_files(files.into())?,
        })
    }

    /// Material given as PEM (from a secret store, say) rather than files.
    /// It changes only through [`replace_pem`](Self::replace_pem).
    pub fn from_pem(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            shared: Shared::from_pem(chain, key, Some(ca))?,
        })
    }

    /// Swaps in new PEM material; on error the current material stays.
    pub fn replace_pem(&self, chain: &[u8], key: &[u8], ca: &[u8]) -> Result<(), TlsError> {
        self.shared.replace(chain, key, Some(ca))
    }

    /// Reads the files now and swaps in their material if it changed
    /// (blocking file reads). `Ok(false)`: nothing changed, or the
    /// material did not come from files. On error the current material
    /// stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.shared.reload()
    }

    /// Polls the files every `every` (at least 1 ms) on a background task
    /// and reloads them when they change; see the type's documentation.
    ///
    /// The task ends when every clone of `self` (and every configuration
    /// built from it) is dropped, or when the returned handle is aborted.
    /// Material not loaded from files has nothing to poll. Must be called
    /// within a Tokio runtime.
    pub fn watch(&self, every: Duration) -> JoinHandle<()> {
        watch_files(&self.shared, every)
    }

    /// Follows reloads: the status changes after every reload attempt that
    /// saw new contents.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.shared.status.subscribe()
    }

    /// The reload counters so far.
    pub fn status(&self) -> ReloadStatus {
        *self.shared.status.borrow()
    }

    /// The certificate chain in use, leaf first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.shared.current.load().key.cert.clone()
    }

    /// The server configuration for the next handshake: this certificate,
    /// client certificates required and verified against the private CA,
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.shared.current.load().server.clone()
    }

    /// The same, with the client certificate optional: verified against
    /// the private CA when one is presented.
    pub(super) fn server_config_optional_client(&self) -> Arc<ServerConfig> {
        self.shared.current.load().server_optional_client.clone()
    }

    pub(super) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.provider
    }

    pub(super) fn server_verifier(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        self.shared.current.load().server_verifier.clone()
    }

    pub(super) fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.shared.current.load().roots.clone()
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.shared.current.load().key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for ReloadingCertificates {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server's certificate chain and key — no CA, as a server that asks
/// for no client certificate has nothing to verify — swapped atomically
/// when they change, without a restart: what a public HTTPS listener
/// serves with [`TlsAcceptor`](super::TlsAcceptor).
///
/// Reloads like [`ReloadingCertificates`]: [`watch`](Self::watch) polls
/// both files and swaps them in together only if the key matches the
/// certificate; a bad file keeps the current certificate and logs an
/// error. Renewals (ACME clients rewriting `fullchain.pem` and
/// `privkey.pem`) apply to the next handshake.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::tls::{ReloadingServerCertificate, TlsAcceptor};
///
/// # #[tokio::main] async fn main() -> Result<(), tower_gateway::tls::TlsError> {
/// let certificate = ReloadingServerCertificate::from_files(
///     "/etc/gateway/fullchain.pem",
///     "/etc/gateway/privkey.pem",
/// )?;
/// let _poller = certificate.watch(Duration::from_secs(60));
/// let acceptor = TlsAcceptor::new(&certificate);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingServerCertificate {
    shared: Arc<Shared<ServerMaterial>>,
}

impl fmt::Debug for ReloadingServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.debug("ReloadingServerCertificate", f)
    }
}

impl ReloadingServerCertificate {
    /// Loads the chain (PEM, leaf first) and key (PEM: PKCS#8, PKCS#1 or
    /// SEC1) files now (blocking file reads: call it at start-up or from
    /// a blocking context). Fails if they are not usable; after that, bad
    /// files never replace good material.
    pub fn from_files(
        chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let paths = Paths {
            chain: chain.into(),
            key: key.into(),
            ca: None,
        };
        Ok(Self {
            shared: Shared::from_files(paths)?,
        })
    }

    /// A chain and key given as PEM rather than files. It changes only
    /// through [`replace_pem`](Self::replace_pem).
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            shared: Shared::from_pem(chain, key, None)?,
        })
    }

    /// Swaps in a new chain and key; on error the current ones stay.
    pub fn replace_pem(&self, chain: &[u8], key: &[u8]) -> Result<(), TlsError> {
        self.shared.replace(chain, key, None)
    }

    /// Reads the files now and swaps in their material if it changed
    /// (blocking file reads). `Ok(false)`: nothing changed, or the
    /// material did not come from files. On error the current material
    /// stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.shared.reload()
    }

    /// Polls the files every `every` (at least 1 ms) on a background task
    /// and reloads them when they change. The task ends when every clone
    /// of `self` (and every acceptor built from it) is dropped, or when
    /// the returned handle is aborted. Must be called within a Tokio
    /// runtime.
    pub fn watch(&self, every: Duration) -> JoinHandle<()> {
        watch_files(&self.shared, every)
    }

    /// Follows reloads: the status changes after every reload attempt that
    /// saw new contents.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.shared.status.subscribe()
    }

    /// The reload counters so far.
    pub fn status(&self) -> ReloadStatus {
        *self.shared.status.borrow()
    }

    /// The certificate chain in use, leaf first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.shared.current.load().key.cert.clone()
    }

    /// The server configuration for the next handshake: this certificate,
    /// no client certificate asked for, ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.shared.current.load().server.clone()
    }
}

impl ResolvesServerCert for ReloadingServerCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.current.load().key.clone())
    }
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The state behind a reloading source: the material in use, the files it
/// came from, the counters.
struct Shared<M> {
    current: ArcSwap<M>,
    provider: Arc<CryptoProvider>,
    files: Option<Watched>,
    status: watch::Sender<ReloadStatus>,
}

struct Watched {
    files: Paths,
    state: Mutex<WatchState>,
}

struct WatchState {
    /// The contents of the material in use.
    loaded: Contents,
    /// What the last poll saw (contents, or the read error's text), so a
    /// bad file is reported once, not at every poll.
    seen: Result<Contents, String>,
}

impl<M: Load> Shared<M> {
    fn from_files(files: Paths) -> Result<Arc<Self>, TlsError> {
        let provider = ring_provider();
        let contents = files.read()?;
        let material = M::load(&contents, &provider)?;
        let watched = Watched {
            files,
            state: Mutex::new(WatchState {
                seen: Ok(contents.clone()),
                loaded: contents,
            }),
        };
        Ok(Self::with(material, provider, Some(watched)))
    }

    fn from_pem(chain: &[u8], key: &[u8], ca: Option<&[u8]>) -> Result<Arc<Self>, TlsError> {
        let provider = ring_provider();
        let material = M::load(&Contents::new(chain, key, ca), &provider)?;
        Ok(Self::with(material, provider, None))
    }

    fn with(material: M, provider: Arc<CryptoProvider>, files: Option<Watched>) -> Arc<Self> {
        Arc::new(Shared {
            current: ArcSwap::from_pointee(material),
            provider,
            files,
            status: watch::Sender::new(ReloadStatus::default()),
        })
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("files", &self.files.as_ref().map(|w| &w.files))
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }

    fn replace(&self, chain: &[u8], key: &[u8], ca: Option<&[u8]>) -> Result<(), TlsError> {
        match M::load(&Contents::new(chain, key, ca), &self.provider) {
            Ok(material) => {
                self.install(material);
                Ok(())
            }
            Err(error) => {
                self.failed();
                Err(error)
            }
        }
    }

    fn install(&self, material: M) {
        self.current.store(Arc::new(material));
        self.status.send_modify(|s| s.reloads += 1);
    }

    fn failed(&self) {
        self.status.send_modify(|s| s.failures += 1);
    }

    /// An explicit reload: always re-reads and reports what happened.
    fn reload(&self) -> Result<bool, TlsError> {
        let Some(watched) = &self.files else {
            return Ok(false);
        };
        let mut state = watched.state.lock().unwrap_or_else(PoisonError::into_inner);
        let contents = match watched.files.read() {
            Ok(contents) => contents,
            Err(error) => {
                state.seen = Err(error.to_string());
                self.failed();
                return Err(error);
            }
        };
        state.seen = Ok(contents.clone());
        self.apply(&mut state, contents)
    }

    /// A background poll: acts only on contents it has not seen yet, so a
    /// bad file is logged once, and its result is logged rather than
    /// returned.
    fn poll(&self) {
        let Some(watched) = &self.files else {
            return;
        };
        let mut state = watched.state.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = watched.files.read().map_err(|error| error.to_string());
        if seen == state.seen {
            return;
        }
        state.seen = seen.clone();
        let outcome = match seen {
            Ok(contents) => self.apply(&mut state, contents),
            Err(error) => {
                self.failed();
                tracing::error!(
                    target: "tower_gateway::tls",
                    %error,
                    "certificate files unreadable; keeping the current certificate"
                );
                return;
            }
        };
        match outcome {
            Ok(true) => tracing::info!(
                target: "tower_gateway::tls",
                chain = %watched.files.chain.display(),
                "certificates reloaded"
            ),
            Ok(false) => {}
            Err(error) => tracing::error!(
                target: "tower_gateway::tls",
                %error,
                chain = %watched.files.chain.display(),
                "certificate reload failed; keeping the current certificate"
            ),
        }
    }

    fn apply(&self, state: &mut WatchState, contents: Contents) -> Result<bool, TlsError> {
        if contents == state.loaded {
            return Ok(false);
        }
        match M::load(&contents, &self.provider) {
            Ok(material) => {
                self.install(material);
                state.loaded = contents;
                Ok(true)
            }
            Err(error) => {
                self.failed();
                Err(error)
            }
        }
    }
}

impl Contents {
    fn new(chain: &[u8], key: &[u8], ca: Option<&[u8]>) -> Self {
        Self {
            chain: chain.to_vec(),
            key: key.to_vec(),
            ca: ca.map(<[u8]>::to_vec),
        }
    }
}

/// Starts the poller of a `watch` method.
fn watch_files<M: Load>(shared: &Arc<Shared<M>>, every: Duration) -> JoinHandle<()> {
    let shared = Arc::downgrade(shared);
    let every = every.max(Duration::from_millis(1));
    tokio::spawn(poll_files(shared, every))
}

/// The poller of [`ReloadingCertificates::watch`] and
/// [`ReloadingServerCertificate::watch`]: holds only a weak reference
/// between polls, so it ends with the last handle.
async fn poll_files<M: Load>(shared: Weak<Shared<M>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; the material was just loaded.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.files.is_none() {
            return;
        }
        // File reads block: keep them off the async worker threads.
        if let Err(error) = tokio::task::spawn_blocking(move || shared.poll()).await {
            tracing::error!(target: "tower_gateway::tls", %error, "certificate poll failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and two leaves it issued, as PEM: (ca, [(chain, key); 2]).
    fn pki() -> (String, [(String, String); 2]) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str| {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        (ca_pem, [leaf("one"), leaf("two")])
    }

    fn leaf_subject(certs: &ReloadingCertificates) -> String {
        super::super::parse_peer_certificate(&certs.certificate_chain()[0])
            .unwrap()
            .subject
    }

    #[test]
    fn replace_pem_swaps_good_material_and_keeps_on_garbage() {
        let (ca, [(chain1, key1), (chain2, key2)]) = pki();
        let certs =
            ReloadingCertificates::from_pem(chain1.as_bytes(), key1.as_bytes(), ca.as_bytes())
                .unwrap();
        assert_eq!(leaf_subject(&certs), "CN=one");
        let before = certs.server_config();

        // A chain with another leaf's key: refused, nothing changes.
        let err = certs
            .replace_pem(chain2.as_bytes(), key1.as_bytes(), ca.as_bytes())
            .unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        assert!(
            certs
                .replace_pem(b"garbage", key2.as_bytes(), ca.as_bytes())
                .is_err()
        );
        assert_eq!(leaf_subject(&certs), "CN=one");
        assert!(Arc::ptr_eq(&before, &certs.server_config()));
        assert_eq!(
            certs.status(),
            ReloadStatus {
                reloads: 0,
                failures: 2
            }
        );

        certs
            .replace_pem(chain2.as_bytes(), key2.as_bytes(), ca.as_bytes())
            .unwrap();
        assert_eq!(leaf_subject(&certs), "CN=two");
        assert!(!Arc::ptr_eq(&before, &certs.server_config()));
        assert_eq!(
            certs.status(),
            ReloadStatus {
                reloads: 1,
                failures: 2
            }
        );

        // PEM material has no files to reload.
        assert!(!certs.reload().unwrap());
    }

    #[test]
    fn server_certificate_reloads_without_a_ca() {
        let (_, [(chain1, key1), (chain2, key2)]) = pki();
        let certificate =
            ReloadingServerCertificate::from_pem(chain1.as_bytes(), key1.as_bytes()).unwrap();
        let subject = |c: &ReloadingServerCertificate| {
            super::super::parse_peer_certificate(&c.certificate_chain()[0])
                .unwrap()
                .subject
        };
        assert_eq!(subject(&certificate), "CN=one");
        let before = certificate.server_config();
        assert_eq!(
            before.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        // A mismatched key or garbage: refused, nothing changes.
        assert!(matches!(
            certificate.replace_pem(chain2.as_bytes(), key1.as_bytes()),
            Err(TlsError::Config(_))
        ));
        assert!(
            certificate
                .replace_pem(b"garbage", key2.as_bytes())
                .is_err()
        );
        assert!(Arc::ptr_eq(&before, &certificate.server_config()));

        certificate
            .replace_pem(chain2.as_bytes(), key2.as_bytes())
            .unwrap();
        assert_eq!(subject(&certificate), "CN=two");
        assert_eq!(
            certificate.status(),
            ReloadStatus {
                reloads: 1,
                failures: 2
            }
        );
        assert!(!certificate.reload().unwrap());
    }
}
