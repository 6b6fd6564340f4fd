//! Mutual TLS from the control-plane client to Consul: a client
//! certificate read from PEM files, presented to an agent that requires
//! one, and re-read when the files change. The agent is the Consul double
//! over HTTPS with client certificates required, on loopback.
#![cfg(all(feature = "consul", feature = "tls"))]

mod consul_double;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use consul_double::{ConsulDouble, pki::TestCa};
use tower_gateway::{
    client::{HttpClientConfig, HttpClientError},
    discovery::consul::{ConsulClient, ConsulError, ServiceRegistration},
};

const LONG: Duration = Duration::from_secs(5);

/// A directory of its own per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces a file atomically (write, then rename), as deployment tools do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An agent on loopback that requires client certificates from
/// `clients`, serving a certificate from `servers`.
async fn agent(servers: &TestCa, clients: &TestCa) -> ConsulDouble {
    let server = servers.leaf("server.dc1.consul", &["127.0.0.1", "localhost"]);
    ConsulDouble::start_mtls(&server.cert_pem, &server.key_pem, &clients.pem).await
}

async fn register(consul: &ConsulClient) -> Result<(), ConsulError> {
    consul
        .register(ServiceRegistration::new("gateway", "gateway-1").port(8443))
        .await
        .map(drop)
}

fn last_client_cert(double: &ConsulDouble) -> Option<Vec<u8>> {
    double.requests().last().and_then(|r| r.client_cert.clone())
}

#[tokio::test]
async fn control_plane_client_with_a_certificate_is_served_and_without_one_refused() {
    let servers = TestCa::new("Consul Agent CA");
    let clients = TestCa::new("Gateway clients CA");
    let double = agent(&servers, &clients).await;
    let dir = TempDir::new("cp-served");
    let gateway = clients.leaf("gateway", &["spiffe://dc1/gateway"]);
    replace(&dir.path("ca.pem"), &servers.pem);
    replace(&dir.path("client.pem"), &gateway.cert_pem);
    replace(&dir.path("client-key.pem"), &gateway.key_pem);
    let trusted = || {
        HttpClientConfig::default()
            .native_roots(false)
            .add_root_file(dir.path("ca.pem"))
    };

    // No client certificate: the handshake is refused; nothing reaches
    // the agent's API.
    let anonymous = ConsulClient::builder(double.url())
        .http(trusted())
        .build()
        .unwrap();
    let err = register(&anonymous).await.unwrap_err();
    assert!(matches!(err, ConsulError::Transport(_)), "{err}");
    assert!(double.requests().is_empty());

    // A certificate from another CA is refused too.
    let stranger = TestCa::new("Someone else").leaf("gateway", &[]);
    replace(&dir.path("other.pem"), &stranger.cert_pem);
    replace(&dir.path("other-key.pem"), &stranger.key_pem);
    let impostor = ConsulClient::builder(double.url())
        .http(trusted().client_certificate_files(dir.path("other.pem"), dir.path("other-key.pem")))
        .build()
        .unwrap();
    assert!(register(&impostor).await.is_err());
    assert!(double.requests().is_empty());

    // With the certificate: served, and the agent saw that certificate.
    let consul = ConsulClient::builder(double.url())
        .http(
            trusted().client_certificate_files(dir.path("client.pem"), dir.path("client-key.pem")),
        )
        .build()
        .unwrap();
    register(&consul).await.unwrap();
    assert!(double.has_instance("gateway-1"));
    assert_eq!(last_client_cert(&double), Some(gateway.der.clone()));
}

#[tokio::test]
async fn control_plane_client_refuses_unusable_certificate_files_at_build() {
    let clients = TestCa::new("Gateway clients CA");
    let one = clients.leaf("one", &[]);
    let two = clients.leaf("two", &[]);
    let dir = TempDir::new("cp-build");
    replace(&dir.path("one.pem"), &one.cert_pem);
    replace(&dir.path("two-key.pem"), &two.key_pem);
    replace(&dir.path("garbage.pem"), "not a certificate");

    let build = |chain: &str, key: &str| {
        ConsulClient::builder("https://127.0.0.1:8501")
            .http(
                HttpClientConfig::default()
                    .client_certificate_files(dir.path(chain), dir.path(key)),
            )
            .build()
    };
    // A key that is not the certificate's.
    assert!(matches!(
        build("one.pem", "two-key.pem"),
        Err(ConsulError::Client(HttpClientError::Tls(_)))
    ));
    assert!(matches!(
        build("garbage.pem", "two-key.pem"),
        Err(ConsulError::Client(HttpClientError::NoClientCertificate))
    ));
    assert!(matches!(
        build("one.pem", "garbage.pem"),
        Err(ConsulError::Client(HttpClientError::NoPrivateKey))
    ));
    assert!(matches!(
        build("missing.pem", "two-key.pem"),
        Err(ConsulError::Client(HttpClientError::Read { .. }))
    ));
    let bad_name = ConsulClient::builder("https://127.0.0.1:8501")
        .http(HttpClientConfig::default().tls_server_name("not a name!"))
        .build();
    assert!(matches!(
        bad_name,
        Err(ConsulError::Client(HttpClientError::ServerName(_)))
    ));
    let missing_ca = ConsulClient::builder("https://127.0.0.1:8501")
        .http(HttpClientConfig::default().add_root_file(dir.path("missing-ca.pem")))
        .build();
    assert!(matches!(
        missing_ca,
        Err(ConsulError::Client(HttpClientError::Read { .. }))
    ));
}

#[tokio::test]
async fn control_plane_client_picks_up_a_rotated_certificate_without_a_rebuild() {
    let servers = TestCa::new("Consul Agent CA");
    let clients = TestCa::new("Gateway clients CA");
    let double = agent(&servers, &clients).await;
    let dir = TempDir::new("cp-rotate");
    let first = clients.leaf("gateway", &["spiffe://dc1/gateway"]);
    let second = clients.leaf("gateway", &["spiffe://dc1/gateway"]);
    let (chain, key) = (dir.path("client.pem"), dir.path("client-key.pem"));
    replace(&chain, &first.cert_pem);
    replace(&key, &first.key_pem);

    let consul = ConsulClient::builder(double.url())
        .http(
            HttpClientConfig::default()
                .native_roots(false)
                .add_root_pem(servers.pem.as_bytes())
                .unwrap()
                .client_certificate_files(&chain, &key)
                .client_certificate_reload_interval(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    register(&consul).await.unwrap();
    assert_eq!(last_client_cert(&double), Some(first.der.clone()));

    // A half-done rotation (new chain, old key) is not usable: the first
    // certificate stays in use.
    replace(&chain, &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(100)).await;
    register(&consul).await.unwrap();
    assert_eq!(last_client_cert(&double), Some(first.der.clone()));

    // The rotation completes: new handshakes present the new certificate.
    replace(&key, &second.key_pem);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        register(&consul).await.unwrap();
        if last_client_cert(&double) == Some(second.der.clone()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
