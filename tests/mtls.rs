//! Mutual TLS over real loopback sockets, with certificates generated at
//! test time: who is refused during the handshake, how the verified peer
//! reaches handlers under axum, plain hyper and tonic, the client
//! connector, reloading without a restart, and RBAC by certificate.
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
    task::{Context, Poll},
    time::Duration,
};

use axum::{Extension, Router, routing::get};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{CertificateError, pki_types::CertificateDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tonic::transport::Endpoint;
use tonic_health::{
    pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        health_server::HealthServer,
    },
    server::HealthService,
};
use tower::Layer;
use tower_gateway::{
    identity::{Identity, PeerIdentity},
    tls::{
        self, CertificateFiles, MtlsAcceptor, MtlsClientConfig, PeerRoles, ReloadingCertificates,
        TlsError,
    },
};

/// Upper bound on any one network exchange or wait.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the connections a hand-written test server accepts.
const MAX_CONNECTIONS: usize = 32;
/// How often reloading tests poll their certificate files.
const POLL: Duration = Duration::from_millis(20);

const ORDERS_SUBJECT: &str = "O=shop, CN=orders";
const ORDERS_SANS: [&str; 2] = ["spiffe://shop/orders", "orders.internal"];

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------
// Certificates, generated once per test binary.

/// A certificate authority that can issue leaves.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate (PEM) and its private key (PKCS#8 PEM).
#[derive(Clone)]
struct Leaf {
    chain: String,
    key: String,
}

fn name(organization: &str, common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common);
    dn
}

impl Ca {
    fn new(common: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("shop", common);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, common: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.issue_with(common, sans, usage, |_| {})
    }

    fn issue_with(
        &self,
        common: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("shop", common);
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else if san.contains("://") {
                    SanType::URI((*san).try_into().unwrap())
                } else {
                    SanType::DnsName((*san).try_into().unwrap())
                }
            })
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, common: &str, sans: &[&str]) -> Leaf {
        self.issue(common, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn server(&self, common: &str) -> Leaf {
        self.issue(
            common,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

struct Fixtures {
    ca: Ca,
    server: Leaf,
    /// A server certificate from `other_ca`.
    rogue_server: Leaf,
    orders: Leaf,
    #[cfg(feature = "rbac")]
    billing: Leaf,
    /// A client certificate from `other_ca`, with the same names as `orders`.
    foreign: Leaf,
    expired: Leaf,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let ca = Ca::new("shop private ca");
        let other_ca = Ca::new("someone else's ca");
        let expired = ca.issue_with(
            "orders",
            &ORDERS_SANS,
            ExtendedKeyUsagePurpose::ClientAuth,
            |params| {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            },
        );
        Fixtures {
            server: ca.server("gateway"),
            rogue_server: other_ca.server("gateway"),
            orders: ca.client("orders", &ORDERS_SANS),
            #[cfg(feature = "rbac")]
            billing: ca.client("billing", &["spiffe://shop/billing", "billing.internal"]),
            foreign: other_ca.client("orders", &ORDERS_SANS),
            expired,
            ca,
        }
    })
}

fn acceptor(leaf: &Leaf) -> MtlsAcceptor {
    let f = fixtures();
    MtlsAcceptor::from_pem(
        leaf.chain.as_bytes(),
        leaf.key.as_bytes(),
        f.ca.pem.as_bytes(),
    )
    .unwrap()
}

/// A client presenting `leaf`, trusting the private CA.
fn client_config(leaf: &Leaf) -> MtlsClientConfig {
    let f = fixtures();
    MtlsClientConfig::from_pem(
        leaf.chain.as_bytes(),
        leaf.key.as_bytes(),
        f.ca.pem.as_bytes(),
    )
    .unwrap()
}

fn orders_peer() -> PeerIdentity {
    PeerIdentity {
        subject: ORDERS_SUBJECT.into(),
        sans: ORDERS_SANS.map(String::from).to_vec(),
    }
}

/// A directory of its own for one test's certificate files.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tower-gateway-mtls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `contents` to `file` the way certificate rotation should:
    /// a temporary file, then an atomic rename.
    fn replace(&self, file: &str, contents: &str) {
        let tmp = self.0.join(format!("{file}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.0.join(file)).unwrap();
    }

    /// Writes `leaf` and the private CA, and names the three files.
    fn certificates(&self, leaf: &Leaf) -> CertificateFiles {
        self.replace("ca.pem", &fixtures().ca.pem);
        self.replace("key.pem", &leaf.key);
        self.replace("chain.pem", &leaf.chain);
        CertificateFiles::new(
            self.0.join("chain.pem"),
            self.0.join("key.pem"),
            self.0.join("ca.pem"),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// What handlers report: the verified peer, as every stack sees it.

/// `subject|san,san|role,role|raw`, where `raw` says whether the raw
/// `PeerIdentity` extension agrees with `Identity::peer`.
fn describe(identity: Option<&Identity>, raw: Option<&PeerIdentity>) -> String {
    let Some(identity) = identity else {
        return "no identity".into();
    };
    let Some(peer) = identity.peer() else {
        return "no peer".into();
    };
    format!(
        "{}|{}|{}|{}",
        peer.subject,
        peer.sans.join(","),
        identity.roles().join(","),
        if raw == Some(peer) {
            "raw"
        } else {
            "raw missing"
        }
    )
}

fn expected(peer: &PeerIdentity, roles: &str) -> String {
    format!("{}|{}|{roles}|raw", peer.subject, peer.sans.join(","))
}

/// An axum app whose `/whoami` describes the peer and counts calls.
fn axum_app(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/whoami",
        get(
            move |Extension(identity): Extension<Identity>, request: axum::extract::Request| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { describe(Some(&identity), request.extensions().get::<PeerIdentity>()) }
            },
        ),
    )
}

/// Serves `app` with [`tls::serve`]; the task handle tells whether the
/// server is still running.
async fn serve_axum(
    acceptor: MtlsAcceptor,
    app: Router,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<tower_gateway::server::ShutdownReport>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(tls::serve(listener, acceptor, app).into_future());
    (addr, server)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn https_client(config: &MtlsClientConfig) -> HttpsClient {
    Client::builder(TokioExecutor::new()).build(tls::client_connector(config))
}

/// GETs `path` on `addr` with a fresh pool (hence a new connection).
async fn get_with(
    config: &MtlsClientConfig,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, Version, String), hyper_util::client::legacy::Error> {
    let client = https_client(config);
    let uri = format!("https://127.0.0.1:{}{path}", addr.port());
    let response = within("request", client.get(uri.parse().unwrap())).await?;
    let (status, version) = (response.status(), response.version());
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    Ok((status, version, String::from_utf8(body.to_vec()).unwrap()))
}

/// The rustls error somewhere in `error`'s source chain.
fn rustls_cause(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next = Some(error);
    for _ in 0..16 {
        let error = next?;
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        // io::Error::source skips the error it wraps: step into it instead.
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

// ---------------------------------------------------------------------------
// Plain hyper, with the lower-level pieces: MtlsAcceptor::accept, the
// per-connection PeerIdentityLayer, hyper-util's auto builder.

/// A hyper service (`call(&self)`) seen as a tower service.
#[derive(Clone)]
struct HyperToTower<S>(S);

impl<S, R> tower::Service<R> for HyperToTower<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> S::Future {
        self.0.call(request)
    }
}

/// Serves a plain hyper service over connections accepted by hand; every
/// handshake's outcome is reported on the returned channel.
async fn serve_hyper(
    acceptor: MtlsAcceptor,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<PeerIdentity, TlsError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, handshakes) = mpsc::unbounded_channel();
    let handler = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let body = describe(
            request.extensions().get::<Identity>(),
            request.extensions().get::<PeerIdentity>(),
        );
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let accepted = match tokio::time::timeout(TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(error)) => return drop(report.send(Err(error))),
                    Err(_) => return drop(report.send(Err(TlsError::HandshakeTimeout))),
                };
                let _ = report.send(Ok(accepted.peer().clone()));
                let (stream, layer) = accepted.into_parts();
                let svc = TowerToHyperService::new(layer.layer(HyperToTower(handler)));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, handshakes)
}

/// Connects with `config`, sends an HTTP/1.1 request and reads; `Ok` with
/// the response bytes, or the client-side error.
async fn raw_exchange(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await?;
    stream
        .write_all(b"GET /whoami HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response)
}

/// A rustls client config presenting `leaf` (or nothing), trusting the
/// private CA, speaking HTTP/1.1.
fn raw_client(leaf: Option<&Leaf>) -> rustls::ClientConfig {
    let mut config = match leaf {
        Some(leaf) => client_config(leaf).rustls_config().clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                rustls::pki_types::pem::PemObject::pem_slice_iter(fixtures().ca.pem.as_bytes())
            {
                let cert: CertificateDer<'static> = cert.unwrap();
                roots.add(cert).unwrap();
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The server refuses the handshake for what `client` presents, with a
/// TLS error `refusal` accepts; the client never gets an HTTP response.
async fn assert_refused(client: Option<&Leaf>, refusal: impl Fn(&rustls::Error) -> bool) {
    let (addr, mut handshakes) = serve_hyper(acceptor(&fixtures().server)).await;
    let outcome = within("exchange", raw_exchange(addr, raw_client(client))).await;
    match &outcome {
        // TLS 1.3: the client's side of the handshake completes before the
        // server has checked the certificate; the refusal is an alert.
        Err(_) => {}
        Ok(bytes) => assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(bytes)),
    }
    let server_side = within("handshake report", handshakes.recv()).await.unwrap();
    match server_side {
        Err(TlsError::Handshake(error)) => assert!(refusal(&error), "{error:?}"),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    assert_refused(None, |e| {
        matches!(e, rustls::Error::NoCertificatesPresented)
    })
    .await;
}

#[tokio::test]
async fn server_refuses_certificate_from_another_ca() {
    assert_refused(Some(&fixtures().foreign), |e| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        )
    })
    .await;
}

#[tokio::test]
async fn server_refuses_expired_client_certificate() {
    assert_refused(Some(&fixtures().expired), |e| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        )
    })
    .await;
}

#[tokio::test]
async fn plain_hyper_service_sees_peer_identity() {
    let (addr, mut handshakes) = serve_hyper(acceptor(&fixtures().server)).await;
    let response = within(
        "exchange",
        raw_exchange(addr, raw_client(Some(&fixtures().orders))),
    )
    .await
    .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&expected(&orders_peer(), "")),
        "{response}"
    );
    let peer = within("handshake report", handshakes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, orders_peer());

    // The same through the hyper-util client and the mTLS connector.
    let (status, _, body) = get_with(&client_config(&fixtures().orders), addr, "/")
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (StatusCode::OK, expected(&orders_peer(), ""))
    );
}

// ---------------------------------------------------------------------------
// axum, through tls::serve

#[tokio::test]
async fn axum_handler_sees_peer_identity_and_refused_clients_never_reach_it() {
    let f = fixtures();
    let calls = Arc::new(AtomicUsize::new(0));
    let roles = PeerRoles::new().san_prefix("spiffe://shop/", ["shop"]);
    let (addr, server) = serve_axum(
        acceptor(&f.server).peer_roles(roles),
        axum_app(calls.clone()),
    )
    .await;

    let (status, _, body) = get_with(&client_config(&f.orders), addr, "/whoami")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, expected(&orders_peer(), "shop"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // TLS 1.3: the client learns of the refusal from the server's alert.
    for (refused, alert) in [
        (&f.foreign, "UnknownCA"),
        (&f.expired, "CertificateExpired"),
    ] {
        let error = get_with(&client_config(refused), addr, "/whoami")
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains(alert), "{error:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused client reached the handler"
    );
    assert!(!server.is_finished());
}

#[tokio::test]
async fn client_connector_speaks_http2_and_http1() {
    let f = fixtures();
    let (addr, _server) = serve_axum(acceptor(&f.server), axum_app(Arc::default())).await;
    let config = client_config(&f.orders);

    // ALPN: the server prefers h2, the connector offers it.
    let (status, version, body) = get_with(&config, addr, "/whoami").await.unwrap();
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(body, expected(&orders_peer(), ""));

    // With `offer_http2(false)` the connector offers HTTP/1.1 only.
    let (status, version, _) = get_with(&config.clone().offer_http2(false), addr, "/whoami")
        .await
        .unwrap();
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));

    // A client that only offers HTTP/1.1 is served HTTP/1.1.
    let http1 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_config().clone())
        .https_only()
        .enable_http1()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(http1);
    let uri = format!("https://localhost:{}/whoami", addr.port());
    let response = within("request", client.get(uri.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        (response.status(), response.version()),
        (StatusCode::OK, Version::HTTP_11)
    );

    // Plain http is refused by default: mTLS cannot be bypassed by a scheme.
    let client = https_client(&config);
    let uri = format!("http://127.0.0.1:{}/whoami", addr.port());
    assert!(
        within("request", client.get(uri.parse().unwrap()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn client_refuses_server_not_signed_by_private_ca() {
    let f = fixtures();
    // The rogue server would accept our client; our client must not accept it.
    let rogue = MtlsAcceptor::from_pem(
        f.rogue_server.chain.as_bytes(),
        f.rogue_server.key.as_bytes(),
        f.ca.pem.as_bytes(),
    )
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, _server) = serve_axum(rogue, axum_app(calls.clone())).await;
    let error = get_with(&client_config(&f.orders), addr, "/whoami")
        .await
        .unwrap_err();
    assert_eq!(
        rustls_cause(&error),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{error:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------
// tonic, through tls::serve

#[tokio::test]
async fn tonic_service_sees_peer_identity() {
    let f = fixtures();
    let (reporter, _) = tonic_health::server::health_reporter();
    let (seen, mut peers) = mpsc::unbounded_channel();
    // A tonic interceptor reads the identity from the request extensions,
    // as it would any other extension.
    let health = HealthServer::with_interceptor(
        HealthService::from_health_reporter(reporter),
        move |request: tonic::Request<()>| {
            let identity = request.extensions().get::<Identity>().cloned();
            let raw = request.extensions().get::<PeerIdentity>().cloned();
            let _ = seen.send(describe(identity.as_ref(), raw.as_ref()));
            match identity {
                Some(_) => Ok(request),
                None => Err(tonic::Status::unauthenticated("no peer identity")),
            }
        },
    );
    let routes = tonic::service::Routes::new(health);
    let roles = PeerRoles::new().san("spiffe://shop/orders", ["orders"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tls::serve(listener, acceptor(&f.server).peer_roles(roles), routes).into_future());

    // tonic's own channel, dialing through the mTLS connector.
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let channel = within(
        "connect",
        endpoint.connect_with_connector(tls::client_connector(&client_config(&f.orders))),
    )
    .await
    .unwrap();
    let response = within(
        "check",
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    let seen = within("interceptor", peers.recv()).await.unwrap();
    assert_eq!(seen, expected(&orders_peer(), "orders"));
}

// ---------------------------------------------------------------------------
// Reloading

#[tokio::test]
async fn reload_presents_new_client_certificate_without_restart() {
    let f = fixtures();
    let dir = TempDir::new("client-reload");
    let certs = ReloadingCertificates::from_files(dir.certificates(&f.orders)).unwrap();
    let _poller = certs.watch(POLL);
    let mut status = certs.subscribe();
    let config = MtlsClientConfig::new(&certs).unwrap();

    let (addr, server) = serve_axum(acceptor(&f.server), axum_app(Arc::default())).await;
    let (_, _, body) = get_with(&config, addr, "/whoami").await.unwrap();
    assert_eq!(body, expected(&orders_peer(), ""));

    // Rotate: a new key and certificate from the same CA, another subject.
    let rotated = f.ca.client("orders-v2", &["spiffe://shop/orders"]);
    dir.replace("key.pem", &rotated.key);
    dir.replace("chain.pem", &rotated.chain);
    within("reload", status.wait_for(|s| s.reloads >= 1))
        .await
        .unwrap();

    // The same configuration, a new connection: the new identity.
    let (_, _, body) = get_with(&config, addr, "/whoami").await.unwrap();
    let v2 = PeerIdentity {
        subject: "O=shop, CN=orders-v2".into(),
        sans: vec!["spiffe://shop/orders".into()],
    };
    assert_eq!(body, expected(&v2, ""));
    assert!(!server.is_finished(), "the server kept running");

    // Garbage keeps the current certificate (and is logged).
    let failures = certs.status().failures;
    dir.replace(
        "chain.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    );
    within("failed reload", status.wait_for(|s| s.failures > failures))
        .await
        .unwrap();
    let (_, _, body) = get_with(&config, addr, "/whoami").await.unwrap();
    assert_eq!(body, expected(&v2, ""));
    assert!(matches!(
        certs.reload(),
        Err(TlsError::Pem {
            what: "certificate chain",
            ..
        })
    ));
    dir.replace("chain.pem", "garbage");
    assert!(matches!(
        certs.reload(),
        Err(TlsError::NoCertificate { .. })
    ));

    // A certificate whose key is still the old one does not load either.
    dir.replace("chain.pem", &f.ca.client("orders-v3", &[]).chain);
    assert!(
        matches!(certs.reload(), Err(TlsError::Config(_))),
        "{:?}",
        certs.reload()
    );
    let (_, _, body) = get_with(&config, addr, "/whoami").await.unwrap();
    assert_eq!(body, expected(&v2, ""));
    assert_eq!(certs.status().reloads, 1);
}

#[tokio::test]
async fn reload_serves_new_server_certificate_without_restart() {
    let f = fixtures();
    let dir = TempDir::new("server-reload");
    let certs = ReloadingCertificates::from_files(dir.certificates(&f.server)).unwrap();
    let _poller = certs.watch(POLL);
    let mut status = certs.subscribe();
    let (addr, server) = serve_axum(MtlsAcceptor::new(&certs), axum_app(Arc::default())).await;

    /// The subject of the certificate the server presents to a new connection.
    async fn server_subject(addr: SocketAddr) -> String {
        let config = Arc::new(raw_client(Some(&fixtures().orders)));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = within(
            "handshake",
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .unwrap();
        let leaf = &stream.get_ref().1.peer_certificates().unwrap()[0];
        tls::parse_peer_certificate(leaf).unwrap().subject
    }

    assert_eq!(server_subject(addr).await, "O=shop, CN=gateway");
    let rotated = f.ca.server("gateway-v2");
    dir.replace("key.pem", &rotated.key);
    dir.replace("chain.pem", &rotated.chain);
    within("reload", status.wait_for(|s| s.reloads >= 1))
        .await
        .unwrap();
    assert_eq!(server_subject(addr).await, "O=shop, CN=gateway-v2");
    assert_eq!(
        tls::parse_peer_certificate(&certs.certificate_chain()[0])
            .unwrap()
            .subject,
        "O=shop, CN=gateway-v2"
    );

    // Clients are still verified against the CA, and still served.
    let (status, _, body) = get_with(&client_config(&f.orders), addr, "/whoami")
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (StatusCode::OK, expected(&orders_peer(), ""))
    );
    assert!(
        get_with(&client_config(&f.foreign), addr, "/whoami")
            .await
            .is_err()
    );
    assert!(!server.is_finished());
}

// ---------------------------------------------------------------------------
// RBAC by certificate

#[cfg(feature = "rbac")]
#[tokio::test]
async fn rbac_authorizes_services_by_certificate_san() {
    use tower::ServiceBuilder;
    use tower_gateway::rbac::{Policy, RbacLayer, Rule};

    async fn whoami(request: axum::extract::Request) -> String {
        describe(
            request.extensions().get::<Identity>(),
            request.extensions().get::<PeerIdentity>(),
        )
    }

    let f = fixtures();
    let policy = Policy::builder()
        .rule(Rule::new("/whoami").any_of(["orders-service"]))
        .deny_unmatched(true)
        .build()
        .unwrap();
    let app = ServiceBuilder::new()
        .layer(RbacLayer::new(policy))
        .service(Router::new().route("/whoami", get(whoami)));
    let roles = PeerRoles::new().san("spiffe://shop/orders", ["orders-service"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tls::serve(listener, acceptor(&f.server).peer_roles(roles), app).into_future());

    let (status, _, body) = get_with(&client_config(&f.orders), addr, "/whoami")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, expected(&orders_peer(), "orders-service"));

    // A verified certificate without the mapped SAN: authenticated, not authorized.
    let (status, _, body) = get_with(&client_config(&f.billing), addr, "/whoami")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("insufficient role"), "{body}");
}

// ---------------------------------------------------------------------------
// The accept loop's lifecycle

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_completes() {
    let f = fixtures();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = tls::serve(listener, acceptor(&f.server), axum_app(Arc::default()))
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        });
    assert_eq!(serve.local_addr().unwrap(), addr);
    let server = tokio::spawn(serve.into_future());

    // A client whose pool keeps its connection open after the response.
    let client = https_client(&client_config(&f.orders));
    let uri: http::Uri = format!("https://127.0.0.1:{}/whoami", addr.port())
        .parse()
        .unwrap();
    let response = within("request", client.get(uri.clone())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    within("body", response.into_body().collect())
        .await
        .unwrap();

    stop.send(()).unwrap();
    within("shutdown", server).await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn silent_client_is_disconnected_after_the_handshake_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = tls::serve(
        listener,
        acceptor(&fixtures().server),
        axum_app(Arc::default()),
    )
    .header_read_timeout(Duration::from_millis(100));
    tokio::spawn(serve.into_future());

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    // The server hangs up: end of stream, or a reset.
    let read = within("hang-up", tcp.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn poller_ends_with_the_last_handle() {
    let dir = TempDir::new("poller-ends");
    let certs = ReloadingCertificates::from_files(dir.certificates(&fixtures().orders)).unwrap();
    let config = MtlsClientConfig::new(&certs).unwrap();
    let poller = certs.watch(POLL);
    drop(certs);
    // The client configuration still holds the certificates.
    assert!(config.rustls_config().client_auth_cert_resolver.has_certs());
    drop(config);
    within("poller", poller).await.unwrap();
}
