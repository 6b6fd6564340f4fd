#![cfg(all(feature = "proxy", feature = "server", feature = "ratelimit"))]
//! One client address for every layer: over real sockets, the proxy
//! forwards one combined `X-Forwarded-For` ending in the peer, and the rate
//! limiter, the auth failure budget and the upstream agree on the client a
//! trusted proxy named.

use std::{convert::Infallible, future::IntoFuture, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::{
    client_addr::{ClientAddrLayer, TrustedProxies},
    discovery::{Endpoint, StaticDiscovery},
    proxy::{Proxy, Upstream},
    ratelimit::{ClientIp, Limit, RateLimitLayer},
    route::{Route, RouteLayer, Routes},
    server,
};

/// The load balancers in front of the gateway: 10.0.0.0/8 and, since the
/// test client connects from it, loopback.
fn proxies() -> TrustedProxies {
    TrustedProxies::none()
        .trust("10.0.0.0/8".parse().unwrap())
        .trust("127.0.0.1".parse().unwrap())
}

/// An upstream that answers with every `X-Forwarded-For` line it received,
/// one per line of the body.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|request: Request<server::Body>| async move {
        let lines: Vec<&[u8]> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let body = Bytes::from(lines.join(&b'\n'));
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    });
    tokio::spawn(server::serve(listener, svc).into_future());
    addr
}

/// The gateway: the client resolved at the edge, rate limited per client
/// IP (one request per hour), proxied to `upstream`.
async fn start_gateway(upstream: SocketAddr) -> SocketAddr {
    let discovery = StaticDiscovery::new([Endpoint::new(
        "upstream-1",
        upstream.ip().to_string(),
        upstream.port(),
    )]);
    let table = Routes::builder()
        .route(
            Route::prefix("/").upstream(
                Upstream::new("upstream", discovery.watch())
                    .request_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    let ratelimit = RateLimitLayer::builder()
        .key(ClientIp::peer())
        .limit(Limit::new().per_hour(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ClientAddrLayer::new(proxies()))
        .layer(RouteLayer::new(&table))
        .layer(ratelimit)
        .service(Proxy::new(&table));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, svc).into_future());
    addr
}

async fn send(gateway: SocketAddr, xff: &[&str]) -> (StatusCode, Bytes) {
    let mut request = Request::get(format!("http://{gateway}/"));
    for line in xff {
        request = request.header("x-forwarded-for", *line);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("gateway answered in time")
        .expect("gateway answered");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// The client an upstream finds in the list it received, trusting the
/// gateway's proxies and the gateway itself (its peer, on loopback).
fn upstream_view(xff: &Bytes) -> std::net::IpAddr {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", xff.as_ref().try_into().unwrap());
    proxies().resolve("127.0.0.1".parse().unwrap(), &headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_xff_lines_reach_the_upstream_as_one_list_ending_in_the_peer() {
    let gateway = start_gateway(start_upstream().await).await;
    // The client wrote 6.6.6.6; the balancer 10.0.0.2 saw 203.0.113.9 and
    // added a line of its own.
    let (status, body) = send(gateway, &["6.6.6.6", "203.0.113.9, 10.0.0.2"]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(
        body, "6.6.6.6, 203.0.113.9, 10.0.0.2, 127.0.0.1",
        "one line, every hop, the peer last"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_and_proxy_agree_on_the_client_behind_a_trusted_peer() {
    let gateway = start_gateway(start_upstream().await).await;

    let (status, body) = send(gateway, &["6.6.6.6", "203.0.113.9, 10.0.0.2"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream_view(&body),
        "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
    );

    // The same client with another forged entry, on one line: the limiter
    // counts it against the same key, so its hourly request is spent.
    let (status, _) = send(gateway, &["7.7.7.7, 203.0.113.9, 10.0.0.2"]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another client behind the same balancer has a quota of its own, and
    // reaches the upstream as itself.
    let (status, body) = send(gateway, &["203.0.113.9", "198.51.100.4, 10.0.0.2"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream_view(&body),
        "198.51.100.4".parse::<std::net::IpAddr>().unwrap()
    );
}

/// The auth failure budget counts failures against the client a trusted
/// proxy named, not against the proxy: one client spending its budget does
/// not lock out the others behind the same balancer.
#[cfg(feature = "jwt")]
#[tokio::test]
async fn auth_failure_budget_keys_on_the_resolved_client() {
    use tower::{Service, ServiceExt};
    use tower_gateway::{
        auth::{FailureBudget, Issuer, JwtAuthLayer, JwtKey},
        connection::ClientAddr,
    };

    let auth = JwtAuthLayer::builder()
        .issuer(Issuer::new("internal").key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
        .failure_budget(FailureBudget::new(1, Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ClientAddrLayer::new(proxies()))
        .layer(auth)
        .service_fn(|_request: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
    let mut status_for = async |client: &str| {
        let mut request = Request::new(String::new());
        request
            .extensions_mut()
            .insert(ClientAddr("10.0.0.1:40000".parse().unwrap()));
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        request
            .headers_mut()
            .insert("authorization", "Bearer not.a.token".parse().unwrap());
        svc.ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap()
            .status()
    };
    assert_eq!(status_for("203.0.113.9").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_for("203.0.113.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same balancer still gets its own answer.
    assert_eq!(status_for("198.51.100.4").await, StatusCode::UNAUTHORIZED);
}
