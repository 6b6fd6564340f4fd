#![cfg(all(
    feature = "jwks",
    feature = "rbac",
    feature = "metrics",
    feature = "ratelimit",
    feature = "proxy",
    feature = "tls"
))]
//! The dev auth server's signing key rotates under load through the
//! reference gateway (`cargo run --example gateway`, in process): no request
//! fails, tokens of the old key keep working, new tokens carry the new key.
//! The gateway and the services verify with the crate's default JWKS
//! timing (a refresh every 5 minutes, an unknown-`kid` refetch at most
//! every 10 s): the key that signs after a rotation was published one whole
//! interval earlier, so they hold it before its first token arrives.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code)]
mod app;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio::sync::watch;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

/// alice's access token, from the auth server's token endpoint.
async fn token(client: &HttpClient, auth: SocketAddr) -> String {
    let request = Request::post(format!("http://{auth}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"grant_type=password&client_id=demo-cli&username=alice&password=alice-password",
        )))
        .unwrap();
    let (status, body) = send(client, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// `GET /inventory` through the gateway (any authenticated caller; the
/// inventory service verifies the token again).
async fn inventory(client: &HttpClient, gateway: SocketAddr, token: &str) -> (StatusCode, Bytes) {
    let request = Request::get(format!("http://{gateway}/inventory"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    send(client, request).await
}

/// The token the follower uses, and whether the key has rotated.
#[derive(Clone)]
struct Newest {
    token: String,
    rotated: bool,
}

const AFTER: usize = 50;
const CAP: usize = 2000;

/// Calls with `fixed`, or else the newest token, until it has made
/// [`AFTER`] requests after the rotation; returns how many it made and the
/// refusals.
async fn caller(
    client: HttpClient,
    gateway: SocketAddr,
    mut newest: watch::Receiver<Newest>,
    fixed: Option<String>,
) -> (usize, Vec<(usize, String, StatusCode, Bytes)>) {
    let mut refused = Vec::new();
    let mut after = 0;
    for i in 0..CAP {
        let Newest { token, rotated } = newest.borrow_and_update().clone();
        let token = fixed.clone().unwrap_or(token);
        let (status, body) = inventory(&client, gateway, &token).await;
        if status != 200 {
            refused.push((i, kid(&token), status, body));
        }
        if rotated {
            after += 1;
            if after == AFTER {
                return (i + 1, refused);
            }
        }
    }
    panic!("{CAP} requests and no rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_a_signing_key_rotation() {
    let running = app::start(app::Config {
        gateway: "127.0.0.1:0".parse().unwrap(),
        auth: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        per_second: 100_000,
        per_hour: 1_000_000,
        ..app::Config::default()
    })
    .await
    .expect("the reference gateway starts");
    let auth = running.auth_server.clone().expect("the demo auth server");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (gateway, auth_addr) = (running.gateway, running.auth);

    let old = token(&client, auth_addr).await;
    let old_kid = kid(&old);
    assert_eq!(old_kid, auth.signing_kid());
    let next_kid = auth.next_kid().expect("the next key is published");

    // Two callers: one keeps its token from before the rotation, the other
    // always uses the newest token it was given. Each goes on until it has
    // made 50 requests after the rotation (and at most 2000 in all).
    let (newest, newest_rx) = watch::channel(Newest {
        token: old.clone(),
        rotated: false,
    });
    let holder = tokio::spawn(caller(
        client.clone(),
        gateway,
        newest_rx.clone(),
        Some(old.clone()),
    ));
    let follower = tokio::spawn(caller(client.clone(), gateway, newest_rx, None));

    // Some requests before the rotation.
    for _ in 0..20 {
        assert_eq!(inventory(&client, gateway, &old).await.0, 200);
    }
    auth.rotate_now().await.unwrap();
    // The key published ahead now signs; the old one is still published.
    assert_eq!(auth.signing_kid(), next_kid);
    let new = token(&client, auth_addr).await;
    assert_eq!(kid(&new), next_kid);
    newest
        .send(Newest {
            token: new.clone(),
            rotated: true,
        })
        .unwrap();

    for (who, task) in [("the old key's token", holder), ("the newest token", follower)] {
        let (made, refused) = task.await.unwrap();
        assert!(refused.is_empty(), "{who}: {refused:?}");
        assert!(made >= AFTER);
    }

    // Both keep working after the load, for as long as they live.
    assert_eq!(inventory(&client, gateway, &old).await.0, 200);
    assert_eq!(inventory(&client, gateway, &new).await.0, 200);
    running.shutdown().await.unwrap();
}
