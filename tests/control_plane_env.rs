//! `ConsulClientBuilder::from_env` reads Consul's TLS variables
//! (`CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
//! `CONSUL_TLS_SERVER_NAME`) as the
//! Consul CLI does. A test binary of its own: the environment is
//! process-wide.
#![cfg(all(feature = "consul", feature = "tls"))]

mod consul_double;

use consul_double::{ConsulDouble, pki::TestCa};
use tower_gateway::discovery::consul::{ConsulClientBuilder, ServiceRegistration};

#[tokio::test]
async fn from_env_reads_consul_tls_variables() {
    let servers = TestCa::new("Consul Agent CA");
    let clients = TestCa::new("Gateway clients CA");
    // The agent's certificate names no address: only
    // `CONSUL_TLS_SERVER_NAME` lets the client verify it.
    let server = servers.leaf("server.dc1.consul", &["server.dc1.consul"]);
    let double = ConsulDouble::start_mtls(&server.cert_pem, &server.key_pem, &clients.pem).await;
    let gateway = clients.leaf("gateway", &[]);

    let dir = std::env::temp_dir().join(format!("tg-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let ca = write("ca.pem", &servers.pem);
    let cert = write("client.pem", &gateway.cert_pem);
    let key = write("client-key.pem", &gateway.key_pem);

    // SAFETY: this binary has this one test, and nothing else reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("CONSUL_HTTP_ADDR", double.addr().to_string());
        std::env::set_var("CONSUL_HTTP_SSL", "true");
        std::env::remove_var("CONSUL_HTTP_TOKEN");
        std::env::set_var("CONSUL_CACERT", &ca);
        std::env::set_var("CONSUL_TLS_SERVER_NAME", "server.dc1.consul");
        std::env::set_var("CONSUL_CLIENT_CERT", &cert);
        std::env::set_var("CONSUL_CLIENT_KEY", &key);
    }
    let consul = ConsulClientBuilder::from_env().build().unwrap();
    assert_eq!(consul.address(), format!("https://{}", double.addr()));
    // Served: the CA verified the agent, and the agent got the client
    // certificate it requires.
    let registration = consul
        .register(ServiceRegistration::new("gateway", "gateway-1").port(8443))
        .await
        .unwrap();
    assert!(double.has_instance("gateway-1"));
    let recorded = double.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].client_cert.as_deref(), Some(&gateway.der[..]));
    registration.deregister().await.unwrap();

    // Without the server name, the agent's certificate does not match the
    // address: refused, nothing sent.
    unsafe { std::env::remove_var("CONSUL_TLS_SERVER_NAME") };
    let unverified = ConsulClientBuilder::from_env().build().unwrap();
    assert!(
        unverified
            .register(ServiceRegistration::new("gateway", "gateway-3").port(8443))
            .await
            .is_err()
    );
    assert_eq!(double.requests().len(), 2);
    unsafe { std::env::set_var("CONSUL_TLS_SERVER_NAME", "server.dc1.consul") };

    // Without the client key variable, no certificate is presented, and
    // the agent refuses the handshake.
    unsafe { std::env::remove_var("CONSUL_CLIENT_KEY") };
    let anonymous = ConsulClientBuilder::from_env().build().unwrap();
    assert!(
        anonymous
            .register(ServiceRegistration::new("gateway", "gateway-2").port(8443))
            .await
            .is_err()
    );
    assert!(!double.has_instance("gateway-2"));
    assert_eq!(
        double.requests().len(),
        2,
        "only the first client's register and deregister"
    );

    // A CA file that does not exist fails the build, naming the problem.
    unsafe { std::env::set_var("CONSUL_CACERT", dir.join("missing.pem")) };
    let err = ConsulClientBuilder::from_env().build().unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
