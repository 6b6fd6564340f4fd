//! HTTPS on the library server, over real loopback sockets with
//! certificates generated at test time: a client without a certificate is
//! served (HTTP/2 and HTTP/1.1 by ALPN); with optional client
//! certificates a valid one becomes the request's identity, a foreign one
//! fails the handshake and none is anonymous; required client
//! certificates are unchanged; the handshake is bounded by the header
//! read timeout; graceful shutdown and certificate reloads work over TLS.
#![cfg(feature = "tls")]

use std::{
    convert::Infallible,
    future::{Future, IntoFuture},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tower_gateway::{
    identity::{Identity, PeerIdentity},
    server::{self, Serve, ShutdownReport},
    tls::{
        self, MtlsAcceptor, PeerRoles, ReloadingCertificates, ReloadingServerCertificate,
        TlsAcceptor,
    },
};

/// Upper bound on any one network exchange or wait.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------
// Certificates, generated once per test binary.

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

#[derive(Clone)]
struct Leaf {
    chain: String,
    key: String,
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "shop");
    dn.push(DnType::CommonName, common);
    dn
}

impl Ca {
    fn new(common: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, common: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        Leaf {
            chain: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, common: &str) -> Leaf {
        let sans = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        self.issue(common, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, common: &str, uri: &str) -> Leaf {
        let sans = vec![SanType::URI(uri.try_into().unwrap())];
        self.issue(common, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

struct Fixtures {
    /// Issues the server certificate: what public clients trust.
    public_ca: Ca,
    server: Leaf,
    /// The CA partners' client certificates chain to.
    partner_ca: Ca,
    partner: Leaf,
    /// A client certificate from a CA the server does not know.
    foreign: Leaf,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let public_ca = Ca::new("public ca");
        let partner_ca = Ca::new("partner ca");
        let other_ca = Ca::new("someone else's ca");
        Fixtures {
            server: public_ca.server("gateway"),
            partner: partner_ca.client("acme", "spiffe://partners/acme"),
            foreign: other_ca.client("acme", "spiffe://partners/acme"),
            public_ca,
            partner_ca,
        }
    })
}

/// Server TLS, no client certificate asked for.
fn public_acceptor() -> TlsAcceptor {
    let server = &fixtures().server;
    TlsAcceptor::from_pem(server.chain.as_bytes(), server.key.as_bytes()).unwrap()
}

/// Server TLS with optional partner certificates.
fn optional_acceptor() -> TlsAcceptor {
    let f = fixtures();
    let certs = ReloadingCertificates::from_pem(
        f.server.chain.as_bytes(),
        f.server.key.as_bytes(),
        f.partner_ca.pem.as_bytes(),
    )
    .unwrap();
    TlsAcceptor::with_optional_client_certificates(&certs)
        .peer_roles(PeerRoles::new().san_prefix("spiffe://partners/", ["partner"]))
}

// ---------------------------------------------------------------------------
// Server and clients

/// Answers with who the caller is: `subject|sans|roles`, or `anonymous`;
/// waits `/<ms>` first; counts calls.
fn whoami(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<server::Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<server::Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let identity = request.extensions().get::<Identity>().cloned();
        let raw = request.extensions().get::<PeerIdentity>().cloned();
        let wait: u64 = request.uri().path()[1..].parse().unwrap_or(0);
        async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let body = match (identity, raw) {
                (None, None) => "anonymous".to_owned(),
                (Some(identity), Some(raw)) if identity.peer() == Some(&raw) => format!(
                    "{}|{}|{}",
                    raw.subject,
                    raw.sans.join(","),
                    identity.roles().join(",")
                ),
                (identity, raw) => format!("inconsistent: {identity:?} {raw:?}"),
            };
            Ok(Response::new(Full::new(Bytes::from(body))))
        }
    })
}

fn spawn<S, F>(serve: Serve<S, F>) -> (SocketAddr, tokio::task::JoinHandle<ShutdownReport>)
where
    Serve<S, F>: IntoFuture<Output = ShutdownReport>,
    <Serve<S, F> as IntoFuture>::IntoFuture: Send + 'static,
{
    let addr = serve.local_addr().unwrap();
    (addr, tokio::spawn(serve.into_future()))
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A rustls client trusting the public CA, presenting `leaf` if given.
fn client_tls(leaf: Option<&Leaf>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(fixtures().public_ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match leaf {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.chain.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A pooled HTTPS client offering h2 and http/1.1, or http/1.1 only.
fn https_client(leaf: Option<&Leaf>, http2: bool) -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(leaf))
        .https_only();
    let connector = if http2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `path` with `client`: status, version and body, or the client's
/// error.
async fn get(
    client: &HttpsClient,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, Version, String), hyper_util::client::legacy::Error> {
    let uri = format!("https://localhost:{}{path}", addr.port());
    let response = within("request", client.get(uri.parse().unwrap())).await?;
    let (status, version) = (response.status(), response.version());
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Ok((status, version, String::from_utf8(body.to_vec()).unwrap()))
}

/// The TLS alert (or other failure) a refused client saw, as text.
async fn refused(client: &HttpsClient, addr: SocketAddr) -> String {
    format!("{:?}", get(client, addr, "/").await.unwrap_err())
}

const PARTNER: &str = "O=shop, CN=acme|spiffe://partners/acme|partner";

// ---------------------------------------------------------------------------
// Server TLS, no client certificate

#[tokio::test]
async fn client_without_certificate_is_served_over_h2_and_http1() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, server) =
        spawn(server::serve(bind().await, whoami(calls.clone())).tls(public_acceptor()));

    // ALPN: the server prefers h2.
    let (status, version, body) = get(&https_client(None, true), addr, "/").await.unwrap();
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "anonymous")
    );
    // A client offering http/1.1 only gets HTTP/1.1.
    let (status, version, body) = get(&https_client(None, false), addr, "/").await.unwrap();
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_11, "anonymous")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // No certificate was asked for: one the client would present is never
    // sent, and proves nothing.
    let (status, _, body) = get(&https_client(Some(&fixtures().partner), true), addr, "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));

    // Plain HTTP on the TLS port is not served.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = within("plain http", tcp.read_to_end(&mut response)).await;
    assert!(
        !response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(!server.is_finished());
}

#[tokio::test]
async fn tls_serve_takes_either_acceptor() {
    let (addr, _server) = spawn(tls::serve(
        bind().await,
        public_acceptor(),
        whoami(Arc::default()),
    ));
    let (status, _, body) = get(&https_client(None, true), addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
}

// ---------------------------------------------------------------------------
// Optional client certificates

#[tokio::test]
async fn optional_client_certificate_is_verified_and_becomes_the_identity() {
    let f = fixtures();
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, server) =
        spawn(server::serve(bind().await, whoami(calls.clone())).tls(optional_acceptor()));

    // A certificate chaining to the partner CA: its identity and roles,
    // over either protocol.
    for http2 in [true, false] {
        let (status, _, body) = get(&https_client(Some(&f.partner), http2), addr, "/")
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, PARTNER));
    }

    // No certificate: served, anonymously.
    let (status, _, body) = get(&https_client(None, true), addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A certificate from another CA fails the handshake (TLS 1.3: the
    // client learns it from the server's alert); it is never downgraded
    // to anonymous.
    let error = refused(&https_client(Some(&f.foreign), true), addr).await;
    assert!(error.contains("UnknownCA"), "{error}");
    // The server's own certificate is not a client certificate.
    let error = refused(&https_client(Some(&f.server), true), addr).await;
    assert!(
        error.contains("alert") || error.contains("Alert"),
        "{error}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "a refused client reached the service"
    );
    assert!(!server.is_finished());
}

#[tokio::test]
async fn accept_reports_the_verified_peer_or_none() {
    let f = fixtures();
    let acceptor = optional_acceptor();
    assert!(acceptor.asks_for_client_certificates());
    assert!(!public_acceptor().asks_for_client_certificates());
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    let (report, mut peers) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let accepted = acceptor.accept(tcp).await;
            let _ = report.send(accepted.map(|a| {
                let roles = a.identity().map(|i| i.roles().to_vec());
                (a.peer().cloned(), roles, a.certificate().is_some())
            }));
        }
    });
    let handshake = |leaf: Option<&'static Leaf>| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(leaf)));
        let mut stream = within("handshake", connector.connect(name, tcp))
            .await
            .unwrap();
        // TLS 1.3: the server verifies the client after the client's side
        // of the handshake is done; a read waits for its verdict.
        let _ = stream.write_all(b"x").await;
        let mut byte = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    };

    handshake(Some(&f.partner)).await;
    let (peer, roles, certificate) = within("report", peers.recv()).await.unwrap().unwrap();
    assert_eq!(
        peer,
        Some(PeerIdentity {
            subject: "O=shop, CN=acme".into(),
            sans: vec!["spiffe://partners/acme".into()],
        })
    );
    assert_eq!(roles, Some(vec!["partner".to_owned()]));
    assert!(certificate);

    handshake(None).await;
    let anonymous = within("report", peers.recv()).await.unwrap().unwrap();
    assert_eq!(anonymous, (None, None, false));

    handshake(Some(&f.foreign)).await;
    let error = within("report", peers.recv()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            error.handshake_error(),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------
// Required client certificates, through the same `Serve::tls`

#[tokio::test]
async fn required_client_certificates_are_unchanged() {
    let f = fixtures();
    let acceptor = MtlsAcceptor::from_pem(
        f.server.chain.as_bytes(),
        f.server.key.as_bytes(),
        f.partner_ca.pem.as_bytes(),
    )
    .unwrap()
    .peer_roles(PeerRoles::new().san_prefix("spiffe://partners/", ["partner"]));
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, _server) = spawn(server::serve(bind().await, whoami(calls.clone())).tls(acceptor));

    let (status, version, body) = get(&https_client(Some(&f.partner), true), addr, "/")
        .await
        .unwrap();
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_2, PARTNER)
    );
    let error = refused(&https_client(None, true), addr).await;
    assert!(error.contains("CertificateRequired"), "{error}");
    let error = refused(&https_client(Some(&f.foreign), true), addr).await;
    assert!(error.contains("UnknownCA"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// Deadlines and shutdown

#[tokio::test]
async fn slowloris_handshake_is_cut_by_the_header_read_timeout() {
    let (addr, _server) = spawn(
        server::serve(bind().await, whoami(Arc::default()))
            .tls(public_acceptor())
            .header_read_timeout(Duration::from_millis(500)),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A TLS record header announcing a 512-byte ClientHello, then its
    // bytes one at a time, every 100 ms: never finishing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp.write_all(&[0]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "a trickled handshake was still going after 3 s");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_https_requests_finish() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, server) = spawn(
        server::serve(bind().await, whoami(calls.clone()))
            .tls(public_acceptor())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .shutdown_timeout(Duration::from_secs(5)),
    );
    // One request over h2, one over HTTP/1.1, each taking 400 ms.
    let h2 = https_client(None, true);
    let http1 = https_client(None, false);
    let in_flight = [
        tokio::spawn(async move { get(&h2, addr, "/400").await }),
        tokio::spawn(async move { get(&http1, addr, "/400").await }),
    ];
    within("requests start", async {
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.send(()).unwrap();

    let mut versions = Vec::new();
    for request in in_flight {
        let (status, version, body) = within("in flight", request).await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
        versions.push(version);
    }
    assert_eq!(versions, [Version::HTTP_2, Version::HTTP_11]);
    let report = within("shutdown", server).await.unwrap();
    assert_eq!((report.open, report.cut), (2, 0), "{report:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

// ---------------------------------------------------------------------------
// Reloading a certificate without a CA

/// A directory of its own for one test's files.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-gateway-server-tls-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes through a temporary file and an atomic rename.
    fn replace(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.0.join(file);
        let tmp = self.0.join(format!("{file}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The subject of the certificate the server presents to a new connection.
async fn server_subject(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(None)));
    let stream = within("handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    let leaf = &stream.get_ref().1.peer_certificates().unwrap()[0];
    tls::parse_peer_certificate(leaf).unwrap().subject
}

#[tokio::test]
async fn reloaded_server_certificate_is_served_without_restart() {
    let f = fixtures();
    let dir = TempDir::new("reload");
    let chain = dir.replace("fullchain.pem", &f.server.chain);
    let key = dir.replace("privkey.pem", &f.server.key);
    let certificate = ReloadingServerCertificate::from_files(&chain, &key).unwrap();
    let _poller = certificate.watch(Duration::from_millis(20));
    let mut status = certificate.subscribe();
    let (addr, server) = spawn(
        server::serve(bind().await, whoami(Arc::default())).tls(TlsAcceptor::new(&certificate)),
    );
    assert_eq!(server_subject(addr).await, "O=shop, CN=gateway");

    let renewed = f.public_ca.server("gateway-renewed");
    dir.replace("privkey.pem", &renewed.key);
    dir.replace("fullchain.pem", &renewed.chain);
    within("reload", status.wait_for(|s| s.reloads >= 1))
        .await
        .unwrap();
    assert_eq!(server_subject(addr).await, "O=shop, CN=gateway-renewed");

    // A broken file keeps the renewed certificate.
    dir.replace("fullchain.pem", "garbage");
    within("failed reload", status.wait_for(|s| s.failures >= 1))
        .await
        .unwrap();
    assert_eq!(server_subject(addr).await, "O=shop, CN=gateway-renewed");
    let (status, _, body) = get(&https_client(None, true), addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
    assert!(!server.is_finished());
}
