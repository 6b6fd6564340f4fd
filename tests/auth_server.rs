#![cfg(feature = "jwks")]
//! The reference gateway's development auth server
//! (examples/gateway/auth_server.rs) over real sockets: the three grants,
//! RFC 6749 §5.2 errors, refresh-token rotation with reuse detection, tokens
//! that verify against its JWKS, and a signing key that survives restarts.

#[path = "../examples/gateway/auth_server.rs"]
#[allow(dead_code)]
mod auth_server;

use std::net::SocketAddr;

use auth_server::{AuthServer, Clock, Config, Handle, KeySource, StateError, StateKey};
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;

struct Auth {
    addr: SocketAddr,
    issuer: String,
}

async fn start(key: KeySource) -> Auth {
    start_with(key).await.0
}

/// An auth server on a socket of its own, and its handle.
async fn start_with(key: KeySource) -> (Auth, Handle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = format!("http://{addr}");
    let config = Config {
        key,
        ..Config::new(issuer.clone())
    };
    let server = AuthServer::new(config).expect("the auth server starts");
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (Auth { addr, issuer }, server.handle())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Auth {
    async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = client.request(request).await.expect("answered");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let reply = self
            .send(
                Request::get(format!("http://{}{path}", self.addr))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        reply.body
    }

    /// `POST /token` with a form, and HTTP Basic credentials if given.
    async fn token(&self, form: &str, basic: Option<(&str, &str)>) -> Reply {
        let mut request = Request::post(format!("http://{}/token", self.addr))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            let credentials = STANDARD.encode(format!("{id}:{secret}"));
            request = request.header("authorization", format!("Basic {credentials}"));
        }
        self.send(
            request
                .body(Full::new(Bytes::from(form.to_owned())))
                .unwrap(),
        )
        .await
    }

    async fn password(&self, user: &str, password: &str) -> Reply {
        self.token(
            &format!("grant_type=password&client_id=demo-cli&username={user}&password={password}"),
            None,
        )
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.token(
            &format!("grant_type=refresh_token&client_id=demo-cli&refresh_token={refresh_token}"),
            None,
        )
        .await
    }

    /// Verifies `token` against the server's JWKS (found through discovery)
    /// and returns its claims.
    async fn verify(&self, token: &str) -> Value {
        self.verify_issued_by(token, &self.issuer).await
    }

    /// Verifies `token` against this server's JWKS, for tokens of `issuer`
    /// (the same server before a restart, then on another port).
    async fn verify_issued_by(&self, token: &str, issuer: &str) -> Value {
        let discovery = self.get("/.well-known/openid-configuration").await;
        assert_eq!(discovery["issuer"], self.issuer);
        let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
        let path = jwks_uri.strip_prefix(&self.issuer).unwrap();
        let jwks: JwkSet = serde_json::from_value(self.get(path).await).unwrap();
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[auth_server::AUDIENCE]);
        validation.set_issuer(&[issuer]);
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .expect("the token verifies against the JWKS")
            .claims
    }
}

fn assert_error(reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"], error, "{}", reply.body);
    assert!(reply.body["error_description"].is_string());
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.headers["pragma"], "no-cache");
}

fn access_token(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["access_token"].as_str().unwrap()
}

fn refresh_token(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["refresh_token"].as_str().unwrap()
}

#[tokio::test]
async fn the_password_grant_signs_a_demo_users_roles_with_a_refresh_token() {
    let auth = start(KeySource::Memory).await;
    let reply = auth.password("alice", "alice-password").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.headers["pragma"], "no-cache");
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 300);
    assert_eq!(reply.body["scope"], "user");
    assert!(refresh_token(&reply).len() >= 43);
    let claims = auth.verify(access_token(&reply)).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["user"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );

    let root = auth.password("root", "root-password").await;
    let claims = auth.verify(access_token(&root)).await;
    assert_eq!(
        (&claims["sub"], &claims["roles"]),
        (&"root".into(), &serde_json::json!(["admin"]))
    );

    // A confidential client may use the grant too, authenticated.
    let ops = auth
        .token(
            "grant_type=password&username=root&password=root-password",
            Some(("ops-console", "ops-console-secret")),
        )
        .await;
    assert_eq!(auth.verify(access_token(&ops)).await["sub"], "root");

    // A public client may identify itself by Basic with an empty secret.
    let public = auth
        .token(
            "grant_type=password&username=bob&password=bob-password",
            Some(("demo-cli", "")),
        )
        .await;
    assert_eq!(auth.verify(access_token(&public)).await["sub"], "bob");

    // A scope narrows the roles, never widens them.
    let narrowed = auth
        .token(
            "grant_type=password&client_id=demo-cli&username=alice&password=alice-password&scope=user",
            None,
        )
        .await;
    assert_eq!(narrowed.body["scope"], "user");
    let wider = auth
        .token(
            "grant_type=password&client_id=demo-cli&username=alice&password=alice-password&scope=user+admin",
            None,
        )
        .await;
    assert_error(&wider, 400, "invalid_scope");
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_invalid_grants() {
    let auth = start(KeySource::Memory).await;
    assert_error(
        &auth.password("alice", "root-password").await,
        400,
        "invalid_grant",
    );
    assert_error(&auth.password("alice", "").await, 400, "invalid_request");
    assert_error(&auth.password("mallory", "x").await, 400, "invalid_grant");
}

#[tokio::test]
async fn the_client_credentials_grant_authenticates_by_basic_or_form() {
    let auth = start(KeySource::Memory).await;
    let basic = auth
        .token(
            "grant_type=client_credentials",
            Some(("inventory-sync", "inventory-sync-secret")),
        )
        .await;
    let claims = auth.verify(access_token(&basic)).await;
    assert_eq!(claims["sub"], "inventory-sync");
    assert_eq!(claims["roles"], serde_json::json!(["user"]));
    // §4.4.3: no refresh token.
    assert!(basic.body.get("refresh_token").is_none());

    let form = auth
        .token(
            "grant_type=client_credentials&client_id=inventory-sync&client_secret=inventory-sync-secret",
            None,
        )
        .await;
    assert_eq!(
        auth.verify(access_token(&form)).await["sub"],
        "inventory-sync"
    );
}

#[tokio::test]
async fn client_authentication_failures_are_invalid_client() {
    let auth = start(KeySource::Memory).await;
    // After HTTP Basic: 401 and a Basic challenge.
    for (id, secret) in [("nobody", "x"), ("inventory-sync", "wrong")] {
        let reply = auth
            .token("grant_type=client_credentials", Some((id, secret)))
            .await;
        assert_error(&reply, 401, "invalid_client");
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic "), "{challenge}");
    }
    // In the form: 400.
    let reply = auth
        .token(
            "grant_type=client_credentials&client_id=inventory-sync&client_secret=wrong",
            None,
        )
        .await;
    assert_error(&reply, 400, "invalid_client");
    assert!(reply.headers.get("www-authenticate").is_none());
    // A confidential client that leaves out its secret.
    let reply = auth
        .token(
            "grant_type=client_credentials&client_id=inventory-sync",
            None,
        )
        .await;
    assert_error(&reply, 400, "invalid_client");
    // No client at all.
    let reply = auth
        .token(
            "grant_type=password&username=alice&password=alice-password",
            None,
        )
        .await;
    assert_error(&reply, 400, "invalid_client");
    // Two authentication methods at once.
    let reply = auth
        .token(
            "grant_type=client_credentials&client_secret=inventory-sync-secret",
            Some(("inventory-sync", "inventory-sync-secret")),
        )
        .await;
    assert_error(&reply, 400, "invalid_request");
}

#[tokio::test]
async fn malformed_and_unsupported_requests_get_rfc_6749_errors() {
    let auth = start(KeySource::Memory).await;
    let reply = auth
        .token(
            "grant_type=authorization_code&client_id=demo-cli&code=x",
            None,
        )
        .await;
    assert_error(&reply, 400, "unsupported_grant_type");
    assert_error(
        &auth.token("client_id=demo-cli", None).await,
        400,
        "invalid_request",
    );
    let reply = auth
        .token(
            "grant_type=password&grant_type=password&client_id=demo-cli",
            None,
        )
        .await;
    assert_error(&reply, 400, "invalid_request");
    // Not a form.
    let reply = auth
        .send(
            Request::post(format!("http://{}/token", auth.addr))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"grant_type":"password"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_error(&reply, 400, "invalid_request");
    // Clients are limited to their grants.
    let reply = auth
        .token("grant_type=client_credentials&client_id=demo-cli", None)
        .await;
    assert_error(&reply, 400, "unauthorized_client");
    let reply = auth
        .token(
            "grant_type=password&username=alice&password=alice-password",
            Some(("inventory-sync", "inventory-sync-secret")),
        )
        .await;
    assert_error(&reply, 400, "unauthorized_client");
    // The old unauthenticated GET is gone.
    let reply = auth
        .send(
            Request::get(format!("http://{}/token?sub=root&roles=admin", auth.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn refresh_tokens_rotate_on_every_use() {
    let auth = start(KeySource::Memory).await;
    let first = auth.password("alice", "alice-password").await;
    let r1 = refresh_token(&first).to_owned();

    let second = auth.refresh(&r1).await;
    let r2 = refresh_token(&second).to_owned();
    assert_ne!(r1, r2);
    let claims = auth.verify(access_token(&second)).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["user"]));

    let third = auth.refresh(&r2).await;
    let r3 = refresh_token(&third).to_owned();
    assert_ne!(r2, r3);

    // Another client may not present alice's refresh token.
    let reply = auth
        .token(
            &format!("grant_type=refresh_token&refresh_token={r3}"),
            Some(("ops-console", "ops-console-secret")),
        )
        .await;
    assert_error(&reply, 400, "invalid_grant");
    // Nor may anyone widen its scope.
    let reply = auth
        .token(
            &format!("grant_type=refresh_token&client_id=demo-cli&refresh_token={r3}&scope=admin"),
            None,
        )
        .await;
    assert_error(&reply, 400, "invalid_scope");
    // Neither refusal used it up.
    refresh_token(&auth.refresh(&r3).await);

    assert_error(
        &auth.refresh("not-a-refresh-token").await,
        400,
        "invalid_grant",
    );
}

#[tokio::test]
async fn replaying_a_used_refresh_token_revokes_its_whole_family() {
    let auth = start(KeySource::Memory).await;
    let login = auth.password("alice", "alice-password").await;
    let r1 = refresh_token(&login).to_owned();
    let other = auth.password("alice", "alice-password").await;
    let unrelated = refresh_token(&other).to_owned();

    let r2 = refresh_token(&auth.refresh(&r1).await).to_owned();
    let r3 = refresh_token(&auth.refresh(&r2).await).to_owned();

    // The old token is refused once used...
    assert_error(&auth.refresh(&r1).await, 400, "invalid_grant");
    // ...and its replay revoked every descendant, the newest included.
    assert_error(&auth.refresh(&r3).await, 400, "invalid_grant");
    assert_error(&auth.refresh(&r2).await, 400, "invalid_grant");
    // Another login's family is untouched.
    refresh_token(&auth.refresh(&unrelated).await);
}

#[tokio::test]
async fn the_signing_key_survives_a_restart_through_its_key_file() {
    let path = std::env::temp_dir().join(format!(
        "tower-gateway-auth-key-{}-{}.pem",
        std::process::id(),
        jsonwebtoken::get_current_timestamp()
    ));
    let _ = std::fs::remove_file(&path);
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Cleanup(path.clone());

    let first = start(KeySource::File(path.clone())).await;
    let pem = std::fs::read_to_string(&path).expect("the key was written");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let token = access_token(&first.password("root", "root-password").await).to_owned();
    let first_jwks = first.get("/jwks").await;

    // A second instance, as after a restart: same key, same kid, and the
    // first one's token verifies against its JWKS.
    let second = start(KeySource::File(path.clone())).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
    assert_eq!(second.get("/jwks").await, first_jwks);
    let jwks: JwkSet = serde_json::from_value(second.get("/jwks").await).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("same kid")).unwrap();
    let mut strict = Validation::new(jsonwebtoken::Algorithm::ES256);
    strict.set_audience(&[auth_server::AUDIENCE]);
    strict.set_issuer(&[&first.issuer]);
    jsonwebtoken::decode::<Value>(&token, &key, &strict).expect("verifies after the restart");

    // In memory, every start has a key of its own.
    let a = start(KeySource::Memory).await;
    let b = start(KeySource::Memory).await;
    assert_ne!(a.get("/jwks").await, b.get("/jwks").await);
}

// ---------------------------------------------------------------------------
// Key rotation, in process on Tokio's paused clock.

/// One request to the router, in process (no socket: the paused clock
/// advances only when every task waits on a timer).
async fn call(router: &axum::Router, request: Request<axum::body::Body>) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn jwks_of(router: &axum::Router) -> JwkSet {
    let request = Request::get("/jwks")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, body) = call(router, request).await;
    assert_eq!(status, 200);
    serde_json::from_value(body).unwrap()
}

fn kids(jwks: &JwkSet) -> Vec<String> {
    jwks.keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn login(router: &axum::Router) -> String {
    let request = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(
            "grant_type=password&client_id=demo-cli&username=alice&password=alice-password",
        ))
        .unwrap();
    let (status, body) = call(router, request).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Verifies `token`'s signature against `jwks` (its expiry is not checked:
/// the token's clock is Tokio's paused one).
fn verifies(token: &str, jwks: &JwkSet) -> bool {
    let Some(jwk) = jwks.find(&kid_of(token)) else {
        return false;
    };
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[auth_server::AUDIENCE]);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).is_ok()
}

#[tokio::test(start_paused = true)]
async fn the_signing_key_rotates_on_its_interval_and_old_keys_stay_published_until_their_tokens_expire()
 {
    let config = Config {
        clock: Clock::tokio(),
        key_rotation: Some(std::time::Duration::from_secs(3600)),
        access_ttl: 300,
        retire_skew: 60,
        ..Config::new("http://auth.test".into())
    };
    let server = AuthServer::new(config).unwrap();
    let handle = server.handle();
    let router = server.router();

    // The key that signs next is published from the start, a whole
    // interval before it signs.
    let a = handle.signing_kid();
    let b = handle.next_kid().expect("a next key");
    assert_eq!(kids(&jwks_of(&router).await), [a.clone(), b.clone()]);
    assert_eq!(kid_of(&login(&router).await), a);

    // The last token `a` signs, a second before the rotation.
    tokio::time::sleep(std::time::Duration::from_secs(3599)).await;
    let last_of_a = login(&router).await;
    assert_eq!(kid_of(&last_of_a), a);

    // The interval rotates without anyone asking: `b` signs, a new key is
    // published next, `a` stays.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(handle.signing_kid(), b);
    let c = handle.next_kid().unwrap();
    assert!(c != a && c != b);
    let jwks = jwks_of(&router).await;
    assert_eq!(kids(&jwks), [b.clone(), c.clone(), a.clone()]);
    assert_eq!(kid_of(&login(&router).await), b);
    assert!(verifies(&last_of_a, &jwks));

    // `a` is published until its last token has expired (300 s) plus the
    // skew (60 s), counted from the rotation at 3600 s...
    tokio::time::sleep(std::time::Duration::from_secs(3600 + 300 + 60 - 3601 - 3)).await;
    let jwks = jwks_of(&router).await;
    assert!(kids(&jwks).contains(&a));
    assert!(verifies(&last_of_a, &jwks));
    // ...and not a moment longer.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let jwks = jwks_of(&router).await;
    assert_eq!(kids(&jwks), [b.clone(), c.clone()]);
    assert!(!verifies(&last_of_a, &jwks));

    // A rotation on demand does what the interval does.
    handle.rotate_now().await.unwrap();
    assert_eq!(handle.signing_kid(), c);
    let d = handle.next_kid().unwrap();
    assert_eq!(kids(&jwks_of(&router).await), [c.clone(), d, b]);
    assert_eq!(kid_of(&login(&router).await), c);
}

#[tokio::test]
async fn a_key_file_pins_the_signing_key() {
    let dir = TempDir::new("pinned");
    let path = dir.0.join("key.pem");
    let (auth, handle) = start_with(KeySource::File(path)).await;
    assert!(handle.next_kid().is_none());
    assert!(handle.rotate_now().await.is_err());
    let jwks: JwkSet = serde_json::from_value(auth.get("/jwks").await).unwrap();
    assert_eq!(kids(&jwks), [handle.signing_kid()]);
}

// ---------------------------------------------------------------------------
// The encrypted state file.

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-gateway-auth-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_key() -> StateKey {
    StateKey::from_bytes(rand::random())
}

fn encrypted(dir: &TempDir, key: &StateKey) -> KeySource {
    KeySource::Encrypted {
        path: dir.0.join("auth-state"),
        key: key.clone(),
    }
}

/// A start that must fail, and how.
fn refused(source: KeySource) -> StateError {
    let error = match AuthServer::new(Config {
        key: source,
        ..Config::new("http://auth.test".into())
    }) {
        Ok(_) => panic!("the auth server started"),
        Err(error) => error,
    };
    match error.downcast::<StateError>() {
        Ok(error) => *error,
        Err(other) => panic!("not a state error: {other}"),
    }
}

#[tokio::test]
async fn a_restart_with_the_state_file_keeps_every_token_and_refresh_token_valid() {
    let dir = TempDir::new("restart");
    let key = random_key();
    let (first, handle) = start_with(encrypted(&dir, &key)).await;
    let path = dir.0.join("auth-state");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let login = first.password("alice", "alice-password").await;
    let before_rotation = access_token(&login).to_owned();
    let r1 = refresh_token(&login).to_owned();
    let r2 = refresh_token(&first.refresh(&r1).await).to_owned();
    let other = refresh_token(&first.password("bob", "bob-password").await).to_owned();
    // A rotated key, and a token it signed.
    handle.rotate_now().await.unwrap();
    let after_rotation = access_token(&first.password("root", "root-password").await).to_owned();
    assert_ne!(kid_of(&before_rotation), kid_of(&after_rotation));

    // Nothing readable on disk: no key, no token, no name.
    let bytes = std::fs::read(&path).unwrap();
    for secret in ["PRIVATE KEY", "alice", r2.as_str(), "demo-cli"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is readable in the state file"
        );
    }
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);

    // The restart: the same keys, published the same way...
    let (second, second_handle) = start_with(encrypted(&dir, &key)).await;
    assert_eq!(second.get("/jwks").await, first.get("/jwks").await);
    assert_eq!(second_handle.signing_kid(), handle.signing_kid());
    assert_eq!(second_handle.next_kid(), handle.next_kid());
    // ...so tokens signed before it, by the retired key too, verify...
    for (token, subject) in [(&before_rotation, "alice"), (&after_rotation, "root")] {
        let claims = second.verify_issued_by(token, &first.issuer).await;
        assert_eq!(claims["sub"], subject);
    }
    // ...and refresh tokens go on rotating.
    let refreshed = second.refresh(&r2).await;
    assert_eq!(
        second.verify(access_token(&refreshed)).await["sub"],
        "alice"
    );
    let r3 = refresh_token(&refreshed).to_owned();
    refresh_token(&second.refresh(&r3).await);
    refresh_token(&second.refresh(&other).await);
}

#[tokio::test]
async fn refresh_token_reuse_detection_survives_a_restart() {
    let dir = TempDir::new("reuse");
    let key = random_key();
    let (first, _) = start_with(encrypted(&dir, &key)).await;
    let r1 = refresh_token(&first.password("alice", "alice-password").await).to_owned();
    let r2 = refresh_token(&first.refresh(&r1).await).to_owned();
    let unrelated = refresh_token(&first.password("alice", "alice-password").await).to_owned();

    // After a restart, replaying the used `r1` is detected and revokes its
    // family, `r2` included.
    let (second, _) = start_with(encrypted(&dir, &key)).await;
    assert_error(&second.refresh(&r1).await, 400, "invalid_grant");
    assert_error(&second.refresh(&r2).await, 400, "invalid_grant");

    // The revocation is saved too.
    let (third, _) = start_with(encrypted(&dir, &key)).await;
    assert_error(&third.refresh(&r2).await, 400, "invalid_grant");
    refresh_token(&third.refresh(&unrelated).await);
}

#[tokio::test]
async fn a_modified_state_file_stops_the_start_and_stays_as_it_was() {
    let dir = TempDir::new("tamper");
    let key = random_key();
    let (first, _) = start_with(encrypted(&dir, &key)).await;
    refresh_token(&first.password("alice", "alice-password").await);
    let path = dir.0.join("auth-state");
    let good = std::fs::read(&path).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // A bit of the ciphertext, of the tag, of the nonce.
    for (what, at) in [
        ("ciphertext", good.len() / 2),
        ("tag", good.len() - 1),
        ("nonce", 20),
    ] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        cases.push((what, bytes));
    }
    cases.push(("truncated", good[..good.len() - 20].to_vec()));
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let error = refused(encrypted(&dir, &key));
        assert!(
            matches!(error, StateError::Tampered { .. }),
            "{what}: {error}"
        );
        assert!(error.to_string().contains("modified"), "{error}");
        // Refused, not reset.
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}");
    }

    let mut bytes = good.clone();
    bytes[8] = 2;
    std::fs::write(&path, &bytes).unwrap();
    let error = refused(encrypted(&dir, &key));
    assert!(
        matches!(error, StateError::Version { version: 2, .. }),
        "{error}"
    );

    std::fs::write(&path, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
    let error = refused(encrypted(&dir, &key));
    assert!(matches!(error, StateError::NotAStateFile { .. }), "{error}");

    // The good file still opens.
    std::fs::write(&path, &good).unwrap();
    start_with(encrypted(&dir, &key)).await;
}

#[tokio::test]
async fn a_wrong_state_key_stops_the_start() {
    let dir = TempDir::new("wrong-key");
    let (first, _) = start_with(encrypted(&dir, &random_key())).await;
    refresh_token(&first.password("alice", "alice-password").await);
    let path = dir.0.join("auth-state");
    let before = std::fs::read(&path).unwrap();
    let error = refused(encrypted(&dir, &random_key()));
    assert!(matches!(error, StateError::WrongKey { .. }), "{error}");
    assert!(error.to_string().contains("AUTH_STATE_KEY"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn state_keys_are_64_hex_digits_or_44_characters_of_base64() {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let base64 = STANDARD.encode(bytes);
    for text in [
        hex.clone(),
        hex.to_uppercase(),
        base64.clone(),
        format!(" {base64}\n"),
    ] {
        let key = StateKey::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        // Its Debug shows nothing of it.
        assert_eq!(format!("{key:?}"), "StateKey(..)");
    }
    for bad in [
        &hex[..62],
        &base64[..40],
        &STANDARD.encode([0u8; 16]),
        // 64 characters, but base64 (and 48 bytes).
        &STANDARD.encode([0xffu8; 48]),
        "",
        &format!("+{}", &hex[1..]),
    ] {
        assert!(
            matches!(StateKey::parse(bad), Err(StateError::BadKey)),
            "{bad:?}"
        );
    }
}
