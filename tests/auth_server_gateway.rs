#![cfg(all(
    feature = "jwks",
    feature = "rbac",
    feature = "metrics",
    feature = "ratelimit",
    feature = "proxy",
    feature = "tls"
))]
//! The dev auth server inside the reference gateway (`cargo run --example
//! gateway`, in process). Its signing key rotates under load: no request
//! fails, tokens of the old key keep working, new tokens carry the new key.
//! Its `[demo.auth_server]` settings for rotation and the encrypted state
//! file are validated, and a state file it cannot open stops the start.
//!
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
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
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

    for (who, task) in [
        ("the old key's token", holder),
        ("the newest token", follower),
    ] {
        let (made, refused) = task.await.unwrap();
        assert!(refused.is_empty(), "{who}: {refused:?}");
        assert!(made >= AFTER);
    }

    // Both keep working after the load, for as long as they live.
    assert_eq!(inventory(&client, gateway, &old).await.0, 200);
    assert_eq!(inventory(&client, gateway, &new).await.0, 200);
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// `[demo.auth_server]` in the config file.

const ROUTE: &str = r#"
[listeners]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[upstreams]]
name = "orders"
instances = ["127.0.0.1:7001"]

[[routes]]
prefix = "/orders"
upstream = "orders"
auth = "none"
"#;

fn parse(
    auth_server: &str,
    env: &[(&str, &str)],
) -> Result<app::config::GatewayConfig, app::config::ConfigErrors> {
    let env: std::collections::BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let text = format!("{ROUTE}\n[demo.auth_server]\nlisten = \"127.0.0.1:0\"\n{auth_server}\n");
    app::config::parse(&text, std::path::Path::new("/etc/gateway"), &env)
}

const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn the_state_file_and_key_rotation_are_configured_in_demo_auth_server() {
    let config = parse(
        "state_file = \"auth-state\"\nstate_key = \"${AUTH_STATE_KEY}\"\nkey_rotation = \"6h\"",
        &[("AUTH_STATE_KEY", HEX_KEY)],
    )
    .expect("valid");
    let auth = config.demo.unwrap().auth_server.unwrap();
    assert_eq!(
        auth.state_file.as_deref(),
        Some(std::path::Path::new("/etc/gateway/auth-state"))
    );
    assert_eq!(auth.state_key.unwrap().expose(), HEX_KEY);
    assert_eq!(auth.key_rotation, Some(Duration::from_secs(6 * 3600)));

    // Defaults: hourly rotation, no state file; "0s" never rotates.
    let auth = parse("", &[]).unwrap().demo.unwrap().auth_server.unwrap();
    assert_eq!(auth.key_rotation, Some(Duration::from_secs(3600)));
    assert!(auth.state_file.is_none());
    let auth = parse("key_rotation = \"0s\"", &[])
        .unwrap()
        .demo
        .unwrap()
        .auth_server
        .unwrap();
    assert_eq!(auth.key_rotation, None);
}

#[test]
fn state_file_settings_are_checked_together() {
    let errors = |text: &str| {
        parse(text, &[])
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        errors("state_file = \"s\""),
        ["demo.auth_server.state_key: required with `state_file`"]
    );
    assert_eq!(
        errors(&format!("state_key = \"{HEX_KEY}\"")),
        ["demo.auth_server.state_file: required with `state_key`"]
    );
    assert_eq!(
        errors(&format!(
            "key_file = \"k.pem\"\nstate_file = \"s\"\nstate_key = \"{HEX_KEY}\""
        )),
        [
            "demo.auth_server.state_file: give `key_file` or `state_file`, not both: the state file holds the keys"
        ]
    );
    assert_eq!(
        errors("state_file = \"s\"\nstate_key = \"not-a-key\""),
        [
            "demo.auth_server.state_key: AUTH_STATE_KEY must be 32 bytes: 64 hex digits or 44 characters of base64"
        ]
    );
}

#[tokio::test]
async fn a_state_file_under_another_key_stops_the_gateway_from_starting() {
    let dir = std::env::temp_dir().join(format!(
        "tower-gateway-auth-gateway-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("auth-state");
    let settings = |key: &str| {
        format!(
            "state_file = \"{}\"\nstate_key = \"{key}\"",
            state.display()
        )
    };
    let loaded = |key: &str| app::config::Loaded {
        config: parse(&settings(key), &[]).expect("valid"),
        version: "test".into(),
    };

    // The first start creates the file.
    let running = app::start_from_config(loaded(HEX_KEY), None)
        .await
        .expect("starts");
    assert!(running.auth_server.is_some());
    running.shutdown().await.unwrap();
    let written = std::fs::read(&state).unwrap();

    let other = "ff".repeat(32);
    let error = match app::start_from_config(loaded(&other), None).await {
        Ok(_) => panic!("started under the wrong key"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("not written under this AUTH_STATE_KEY"),
        "{error}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), written);
    let _ = std::fs::remove_dir_all(&dir);
}
