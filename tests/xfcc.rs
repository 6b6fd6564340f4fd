//! `X-Forwarded-Client-Cert` behind the mTLS server: the upstream sees
//! the verified certificate's hash, subject, SPIFFE ID and DNS names in
//! Envoy's format, quoted and escaped, and never a copy the client sent.
//! Real sockets on loopback, certificates made at test time.
#![cfg(feature = "tls")]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::tls::{self, ForwardClientCertLayer, MtlsAcceptor, MtlsClientConfig};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String, Vec<u8>),
}

fn pki(client_cn: &str) -> Pki {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::default();
    server.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    let server_key = KeyPair::generate().unwrap();
    let server_pem = server.signed_by(&server_key, &issuer).unwrap().pem();

    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::OrganizationName, "shop");
    client
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    client.subject_alt_names = vec![
        SanType::URI("spiffe://shop/ns/default/sa/orders".try_into().unwrap()),
        SanType::DnsName("orders.internal".try_into().unwrap()),
        SanType::DnsName("orders.shop".try_into().unwrap()),
    ];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca: ca_pem,
        server: (server_pem, server_key.serialize_pem()),
        client: (
            client_cert.pem(),
            client_key.serialize_pem(),
            client_cert.der().to_vec(),
        ),
    }
}

/// An mTLS server whose upstream answers with every
/// `x-forwarded-client-cert` value it received, one per line.
async fn upstream_echo(pki: &Pki) -> u16 {
    let acceptor = MtlsAcceptor::from_pem(
        pki.server.0.as_bytes(),
        pki.server.1.as_bytes(),
        pki.ca.as_bytes(),
    )
    .unwrap();
    let app = ServiceBuilder::new()
        .layer(ForwardClientCertLayer::new().by("spiffe://shop/ns/default/sa/gateway"))
        .service_fn(|request: Request<tower_gateway::server::Body>| async move {
            let values: Vec<String> = request
                .headers()
                .get_all("x-forwarded-client-cert")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Ok::<_, std::convert::Infallible>(http::Response::new(values.join("\n")))
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { tls::serve(listener, acceptor, app).await });
    port
}

async fn send(pki: &Pki, port: u16, forged: &[&str]) -> String {
    let config = MtlsClientConfig::from_pem(
        pki.client.0.as_bytes(),
        pki.client.1.as_bytes(),
        pki.ca.as_bytes(),
    )
    .unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls::client_connector(&config));
    let mut request = Request::get(format!("https://localhost:{port}/"));
    for value in forged {
        request = request.header("x-forwarded-client-cert", *value);
    }
    let request = request.body(Empty::new()).unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn xfcc_upstream_sees_the_verified_certificate_and_no_forged_copy() {
    let pki = pki("orders");
    let port = upstream_echo(&pki).await;
    let hash = sha256_hex(&pki.client.2);
    let expected = format!(
        "By=spiffe://shop/ns/default/sa/gateway;Hash={hash};Subject=\"CN=orders, O=shop\";\
         URI=spiffe://shop/ns/default/sa/orders;DNS=orders.internal;DNS=orders.shop"
    );

    // Nothing sent: the verified identity is set.
    assert_eq!(send(&pki, port, &[]).await, expected);
    // Forged copies — one, or several, one of them well-formed and
    // claiming an admin identity — are all replaced by the verified one.
    assert_eq!(
        send(&pki, port, &["URI=spiffe://shop/ns/default/sa/admin"]).await,
        expected
    );
    assert_eq!(
        send(
            &pki,
            port,
            &[
                "By=spiffe://evil;Hash=00;URI=spiffe://shop/ns/default/sa/admin",
                "Subject=\"CN=admin\""
            ]
        )
        .await,
        expected
    );
}

#[tokio::test]
async fn xfcc_quotes_and_escapes_subjects_with_delimiters_and_quotes() {
    let pki = pki(r#"Evil "Corp"; a=b, c\d"#);
    let port = upstream_echo(&pki).await;
    let value = send(&pki, port, &[]).await;
    let subject = tls::parse_peer_certificate(&pki.client.2.clone().into())
        .unwrap()
        .subject;
    assert!(subject.contains(r#"Evil "Corp"; a=b, c\d"#), "{subject}");
    // Inside the always-quoted Subject, quotes and backslashes are
    // escaped, so the element still splits at the right `;` and `,`.
    let escaped = subject.replace('\\', r"\\").replace('"', "\\\"");
    assert!(
        value.contains(&format!(";Subject=\"{escaped}\";URI=")),
        "{value}"
    );
    assert_eq!(
        split_unquoted(&value, ';').len(),
        6,
        "By, Hash, Subject, URI, DNS, DNS: {value}"
    );
    assert_eq!(split_unquoted(&value, ',').len(), 1, "one element: {value}");
}

/// Splits at `sep` outside double quotes, honouring backslash escapes —
/// how an XFCC reader tokenizes.
fn split_unquoted(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().unwrap().push(c);
    }
    parts
}

/// The whole path: an mTLS edge, the layer, the reverse proxy, and a
/// plain-HTTP upstream that records what reached it.
#[cfg(feature = "proxy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_reaches_the_upstream_through_the_proxy() {
    use std::time::Duration;
    use tower_gateway::{
        discovery::{Endpoint, StaticDiscovery},
        proxy::{Proxy, RetryConfig, Upstream},
        route::{Route, Routes},
    };

    // The upstream: answers with the XFCC values it received.
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream_listener.local_addr().unwrap().port();
    let echo = axum::Router::new().route(
        "/",
        axum::routing::get(|headers: http::HeaderMap| async move {
            headers
                .get_all("x-forwarded-client-cert")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        }),
    );
    tokio::spawn(async move { axum::serve(upstream_listener, echo).await });

    // The gateway: mTLS edge, XFCC, proxy.
    let pki = pki("orders");
    let discovery = StaticDiscovery::new([Endpoint::new("echo-1", "127.0.0.1", upstream_port)]);
    let upstream = Upstream::new("echo", discovery.watch())
        .retries(RetryConfig::none())
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let table = Routes::builder()
        .route(Route::prefix("/").upstream(upstream))
        .build()
        .unwrap();
    let gateway = ServiceBuilder::new()
        .layer(ForwardClientCertLayer::new())
        .service(Proxy::new(&table));
    let acceptor = MtlsAcceptor::from_pem(
        pki.server.0.as_bytes(),
        pki.server.1.as_bytes(),
        pki.ca.as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { tls::serve(listener, acceptor, gateway).await });

    let seen = send(&pki, port, &["URI=spiffe://shop/ns/default/sa/admin"]).await;
    assert_eq!(
        seen,
        format!(
            "Hash={};Subject=\"CN=orders, O=shop\";URI=spiffe://shop/ns/default/sa/orders;\
             DNS=orders.internal;DNS=orders.shop",
            sha256_hex(&pki.client.2)
        )
    );
}
