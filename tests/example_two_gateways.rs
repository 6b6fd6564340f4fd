#![cfg(all(
    feature = "jwt",
    feature = "rbac",
    feature = "redis",
    feature = "consul",
    feature = "proxy",
    feature = "server"
))]
//! `examples/two_gateways` (its `gateway.rs`, included as it is): two
//! gateway instances in front of one real `redis-server` and the Consul
//! API double. A consumer's limit is one limit whichever gateway its
//! requests reach, and both gateways follow the instances Consul reports.
//!
//! Without `redis-server` on the PATH the tests print why and skip (they
//! fail under `CI=true`), as the other Redis tests do.

mod consul_double;
#[path = "../examples/two_gateways/gateway.rs"]
mod gateway;
mod support_redis;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use consul_double::ConsulDouble;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support_redis::{RedisServer, redis_available};
use tokio::net::TcpListener;

const SECRET: &[u8] = b"two-gateways-share-this-secret!!";
/// Upper bound on one exchange, and on waiting for discovery to settle.
const TIMEOUT: Duration = Duration::from_secs(10);

fn token(subject: &str, roles: &[&str]) -> String {
    tower_gateway::auth::install_crypto_backend();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": gateway::ISSUER, "sub": subject, "roles": roles, "iat": now, "exp": now + 600,
    });
    let key = EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// An instance of the `orders` service: answers with its name, registered
/// in Consul under `id`.
async fn instance(consul: &ConsulDouble, id: &'static str) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = tower::service_fn(move |_: Request<tower_gateway::server::Body>| async move {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(id))))
    });
    tokio::spawn(tower_gateway::server::serve(listener, svc).into_future());
    consul.register(json!({
        "ID": id, "Name": gateway::SERVICE, "Address": "127.0.0.1", "Port": port,
    }));
}

/// Starts one gateway instance; it runs until the test's runtime ends.
async fn start_gateway(redis: &RedisServer, consul: &ConsulDouble) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = gateway::Settings {
        redis_url: redis.url(),
        consul_addr: consul.url(),
        jwt_secret: SECRET.to_vec(),
    };
    tokio::spawn(gateway::gateway(listener, settings, std::future::pending()));
    addr
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    gw: SocketAddr,
    bearer: Option<&str>,
) -> Reply {
    let mut request = Request::get(format!("http://{gw}/orders/7"));
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let response = tokio::time::timeout(
        TIMEOUT,
        client.request(request.body(Full::default()).unwrap()),
    )
    .await
    .expect("the gateway answers in time")
    .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Polls `gw` (as a consumer of its own, so no one else's quota is spent)
/// until it answers from `instance`: discovery has caught up.
async fn until_served_by(
    client: &Client<HttpConnector, Full<Bytes>>,
    gw: SocketAddr,
    instance: &str,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut n = 0;
    loop {
        // A fresh consumer every few polls keeps under the limit.
        let probe = token(&format!("probe-{gw}-{}", n / 4), &["user"]);
        let reply = get(client, gw, Some(&probe)).await;
        if reply.status == StatusCode::OK && reply.body == instance {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gw} never reached {instance}: {reply:?}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_per_consumer_through_redis() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let consul = ConsulDouble::start().await;
    instance(&consul, "orders-1").await;
    let (a, b) = (
        start_gateway(&redis, &consul).await,
        start_gateway(&redis, &consul).await,
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    until_served_by(&client, a, "orders-1").await;
    until_served_by(&client, b, "orders-1").await;

    // No token: refused by either gateway.
    let reply = get(&client, b, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");

    // Carol spends her whole limit through gateway A…
    let carol = token("carol", &["user"]);
    for n in 0..gateway::CALLS_PER_MINUTE {
        let reply = get(&client, a, Some(&carol)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "orders-1"),
            "call {n}"
        );
    }
    // …and gateway B, which has never seen her, refuses her next request.
    let reply = get(&client, b, Some(&carol)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    let problem: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(problem["code"], "rate_limited");
    let retry_after: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(
        get(&client, a, Some(&carol)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // The state both gateways decided on lives in Redis.
    let keys = redis.cli(&["KEYS", "gw:rl:*"]);
    assert!(keys.contains("carol"), "no limit state in Redis: {keys:?}");

    // Dave has a limit of his own, shared the same way.
    let dave = token("dave", &["user"]);
    for n in 0..gateway::CALLS_PER_MINUTE {
        let gw = if n % 2 == 0 { a } else { b };
        assert_eq!(
            get(&client, gw, Some(&dave)).await.status,
            StatusCode::OK,
            "call {n}"
        );
    }
    assert_eq!(
        get(&client, a, Some(&dave)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_follow_the_instances_consul_reports() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let consul = ConsulDouble::start().await;
    instance(&consul, "orders-1").await;
    let (a, b) = (
        start_gateway(&redis, &consul).await,
        start_gateway(&redis, &consul).await,
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    until_served_by(&client, a, "orders-1").await;
    until_served_by(&client, b, "orders-1").await;

    // A new instance registers and the old one leaves: both gateways move
    // to it without a restart.
    instance(&consul, "orders-2").await;
    consul.deregister("orders-1");
    until_served_by(&client, a, "orders-2").await;
    until_served_by(&client, b, "orders-2").await;
}
