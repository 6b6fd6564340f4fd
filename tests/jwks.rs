//! JWKS and OIDC discovery, against a loopback auth server whose key set the
//! tests change while the gateway runs: rotation, outages, garbage documents,
//! unknown-kid floods, symmetric keys in a JWKS, and every key type.
#![cfg(feature = "jwks")]
mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::*;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};
use tower_gateway::{
    auth::{HttpClientConfig, Issuer, JwksOptions, JwtAuthLayer},
    identity::Identity,
    reject::ResponseBody,
};

// ---------------------------------------------------------------------------
// Gateway harness
// ---------------------------------------------------------------------------

type Req = Request<Full<Bytes>>;
type Svc = BoxCloneService<Req, Response<ResponseBody<Full<Bytes>>>, Infallible>;

struct Gateway {
    layer: JwtAuthLayer,
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A 401 `invalid_token` rejection rendered as problem JSON.
    fn assert_invalid_token(&self, what: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            self.text()
        );
        let challenge = self.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem = self.json();
        assert_eq!(problem["status"], 401, "{what}");
        assert_eq!(problem["code"], "invalid_token", "{what}");
        let told = format!("{challenge} {}", self.text()).to_lowercase();
        assert!(
            !told.contains("signature") && !told.contains("key"),
            "{what}: {told}"
        );
    }
}

async fn send(svc: Svc, req: Req) -> Reply {
    let response = svc.oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn bearer(token: &str) -> Req {
    Request::builder()
        .method(Method::GET)
        .uri("/orders")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap()
}

impl Gateway {
    fn new(layer: JwtAuthLayer) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(tower_gateway::reject::RenderLayer::new())
            .layer(layer.clone())
            .service_fn(move |req: Req| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let identity = req.extensions().get::<Identity>();
                    let seen = json!({
                        "identity": identity.is_some(),
                        "sub": identity.and_then(Identity::subject),
                        "iss": identity.and_then(Identity::issuer),
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
                }
            });
        Self {
            layer,
            svc: BoxCloneService::new(svc),
            calls,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn send(&self, token: &str) -> Reply {
        send(self.svc.clone(), bearer(token)).await
    }

    /// Whether `token` reaches the inner service with an identity; panics on
    /// anything but 200 (with an identity) or a proper 401.
    async fn passes(&self, token: &str, what: &str) -> bool {
        let before = self.calls();
        let reply = self.send(token).await;
        if reply.status == StatusCode::OK {
            assert_eq!(self.calls(), before + 1, "{what}");
            assert_eq!(reply.json()["identity"], true, "{what}");
            true
        } else {
            reply.assert_invalid_token(what);
            assert_eq!(
                self.calls(),
                before,
                "{what}: refused but inner service called"
            );
            false
        }
    }

    async fn expect_ok(&self, token: &str, what: &str) -> Value {
        let reply = self.send(token).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        let seen = reply.json();
        assert_eq!(seen["identity"], true, "{what}");
        seen
    }

    async fn expect_refused(&self, token: &str, what: &str) {
        assert!(!self.passes(token, what).await, "{what}: accepted");
    }

    fn fetches(&self) -> u64 {
        self.layer.jwks_fetch_counts().0
    }

    fn failures(&self) -> u64 {
        self.layer.jwks_fetch_counts().1
    }
}

// ---------------------------------------------------------------------------
// Auth server
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// 200 with the current JWKS.
    Serve,
    /// 500 with a text body.
    Error,
    /// 200 with an HTML login page.
    Html,
    /// 200 with truncated JSON.
    BrokenJson,
    /// Never answers (until the test's runtime ends).
    Hang,
}

struct ServerState {
    jwks: Value,
    mode: Mode,
    base: String,
    last_hit: Option<Instant>,
}

/// A loopback auth server: `/jwks` and OIDC discovery.
struct AuthServer {
    base: String,
    state: Arc<Mutex<ServerState>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
}

impl AuthServer {
    async fn start(jwks: Value) -> Self {
        let state = Arc::new(Mutex::new(ServerState {
            jwks,
            mode: Mode::Serve,
            base: String::new(),
            last_hit: None,
        }));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let discovery_hits = Arc::new(AtomicUsize::new(0));
        let (s, j, d) = (state.clone(), jwks_hits.clone(), discovery_hits.clone());
        let addr = serve(move |req: Request<hyper::body::Incoming>| {
            let (state, jwks_hits, discovery_hits) = (s.clone(), j.clone(), d.clone());
            async move {
                let respond = |status: StatusCode, content_type: &str, body: String| {
                    Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap()
                };
                match req.uri().path() {
                    "/jwks" => {
                        // Hit, mode and document are read under one lock, so a
                        // test that publishes under the same lock knows which
                        // fetches saw the old document.
                        let (mode, body) = {
                            let mut s = state.lock().unwrap();
                            jwks_hits.fetch_add(1, Ordering::SeqCst);
                            s.last_hit = Some(Instant::now());
                            (s.mode, s.jwks.to_string())
                        };
                        match mode {
                            Mode::Serve => respond(StatusCode::OK, "application/json", body),
                            Mode::Error => respond(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "text/plain",
                                "upstream exploded".into(),
                            ),
                            Mode::Html => respond(
                                StatusCode::OK,
                                "text/html",
                                "<!doctype html><html><body>Please log in</body></html>".into(),
                            ),
                            Mode::BrokenJson => respond(
                                StatusCode::OK,
                                "application/json",
                                r#"{"keys": [{"kty":"#.into(),
                            ),
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                respond(StatusCode::OK, "application/json", body)
                            }
                        }
                    }
                    "/.well-known/openid-configuration" => {
                        discovery_hits.fetch_add(1, Ordering::SeqCst);
                        let base = state.lock().unwrap().base.clone();
                        let doc = json!({
                            "issuer": base,
                            "jwks_uri": format!("{base}/jwks"),
                            "authorization_endpoint": format!("{base}/auth"),
                        });
                        respond(StatusCode::OK, "application/json", doc.to_string())
                    }
                    _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found".into()),
                }
            }
        })
        .await;
        assert!(addr.ip().is_loopback());
        let base = format!("http://{addr}");
        state.lock().unwrap().base = base.clone();
        Self {
            base,
            state,
            jwks_hits,
            discovery_hits,
        }
    }

    fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base)
    }

    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    fn publish(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn since_last_hit(&self) -> Option<Duration> {
        self.state.lock().unwrap().last_hit.map(|t| t.elapsed())
    }

    /// Publishes `jwks` at a moment when no fetch has reached the server for
    /// `quiet`. Any fetch that read the old document then started more than
    /// `quiet` ago and is long finished, so with `quiet` above the minimum
    /// refetch interval, the next unknown kid is free to trigger a refetch.
    async fn publish_when_quiet(&self, jwks: Value, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if s.last_hit.is_none_or(|t| t.elapsed() >= quiet) {
                    s.jwks = jwks;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "auth server never quiet for {quiet:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until no fetch has reached the server for `quiet`.
    async fn wait_quiet(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.since_last_hit().is_some_and(|d| d < quiet) {
            assert!(
                Instant::now() < deadline,
                "auth server never quiet for {quiet:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Polls `condition` every 10 ms until it holds; panics after `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(keys().rsa.private_pem.as_bytes()).unwrap()
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(keys().rsa2.private_pem.as_bytes()).unwrap()
}

/// The Ed25519 public JWK. (`support::jwk` cannot make it: jsonwebtoken's
/// `Jwk::from_encoding_key` only takes a PKCS#8 v1 Ed25519 key, and
/// ed25519-dalek writes v2, with the public key.)
fn ed_jwk(kid: &str) -> Value {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let public = ed25519_dalek::VerifyingKey::from_public_key_pem(&keys().ed.public_pem).unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes()), "alg": "EdDSA", "kid": kid})
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// A fresh token (unique `jti`, so the verified-token cache never answers).
fn token(key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut c = claims("alice", &["user"]);
    c["jti"] = json!(SEQ.fetch_add(1, Ordering::Relaxed));
    mint_with(key, alg, Some(kid), &c)
}

fn jwks_layer(issuer: Issuer, options: JwksOptions) -> JwtAuthLayer {
    jwks_layer_with_timeout(issuer, options, Duration::from_secs(2))
}

fn jwks_layer_with_timeout(
    issuer: Issuer,
    options: JwksOptions,
    request_timeout: Duration,
) -> JwtAuthLayer {
    JwtAuthLayer::builder()
        .issuer(issuer)
        .jwks_options(options)
        .http_client(
            HttpClientConfig::default()
                .native_roots(false)
                .connect_timeout(Duration::from_millis(500))
                .request_timeout(request_timeout),
        )
        .build()
        .unwrap()
}

fn issuer_for(server: &AuthServer) -> Issuer {
    Issuer::new(ISSUER)
        .audience(AUDIENCE)
        .jwks_url(server.jwks_url())
}

const KEYS_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// k1 → k1+k2 → k2: no request with a published key is ever refused, a new
/// kid is picked up by the refetch it triggers, and a retired key (even for
/// a token in the verified-token cache) stops working after a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_without_failed_requests() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    // The background refresh (600 ms) is slower than the minimum refetch
    // interval (300 ms), so an unknown kid can trigger a refetch between two.
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(600))
            .min_refetch_interval(Duration::from_millis(300))
            .unknown_kid_wait(Duration::from_secs(2)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "JWKS never loaded");

    // Phase 1: k1 only.
    for i in 0..10 {
        gw.expect_ok(
            &token(&rsa1(), Algorithm::RS256, "k1"),
            &format!("phase 1 #{i}"),
        )
        .await;
    }
    // Phase 2: k1 + k2. The first k2 token must pass at once: the refetch it
    // triggers is awaited instead of refusing it.
    server
        .publish_when_quiet(
            jwks(&[
                jwk(&rsa1(), Algorithm::RS256, "k1"),
                jwk(&rsa2(), Algorithm::RS256, "k2"),
            ]),
            Duration::from_millis(350),
        )
        .await;
    let hits = server.hits();
    gw.expect_ok(
        &token(&rsa2(), Algorithm::RS256, "k2"),
        "first k2 token after publication",
    )
    .await;
    assert!(server.hits() > hits, "k2 passed without a fetch");
    let cached_k1 = token(&rsa1(), Algorithm::RS256, "k1");
    gw.expect_ok(&cached_k1, "k1 token to be cached").await;
    for i in 0..20 {
        gw.expect_ok(
            &token(&rsa1(), Algorithm::RS256, "k1"),
            &format!("phase 2 k1 #{i}"),
        )
        .await;
        gw.expect_ok(
            &token(&rsa2(), Algorithm::RS256, "k2"),
            &format!("phase 2 k2 #{i}"),
        )
        .await;
    }

    // Phase 3: k2 only. k2 keeps passing on every request; k1 (fresh or
    // cached) is refused once a refresh has seen the new set.
    server.publish(jwks(&[jwk(&rsa2(), Algorithm::RS256, "k2")]));
    let hits = server.hits();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rounds = 0;
    loop {
        rounds += 1;
        gw.expect_ok(
            &token(&rsa2(), Algorithm::RS256, "k2"),
            &format!("phase 3 k2 #{rounds}"),
        )
        .await;
        if !gw.passes(&cached_k1, "cached k1 during phase 3").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "k1 still accepted after {rounds} rounds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.hits() > hits);
    for i in 0..5 {
        gw.expect_refused(&cached_k1, &format!("cached k1 after rotation #{i}"))
            .await;
        gw.expect_refused(
            &token(&rsa1(), Algorithm::RS256, "k1"),
            &format!("fresh k1 #{i}"),
        )
        .await;
        gw.expect_ok(
            &token(&rsa2(), Algorithm::RS256, "k2"),
            &format!("k2 after rotation #{i}"),
        )
        .await;
    }
    assert_eq!(gw.failures(), 0);
}

/// The auth server fails after the first load (500, then no answer at all):
/// the last good keys keep verifying, every failure is counted, and the keys
/// are picked up again once it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_last_good_keys() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    // A short request timeout, so that the hanging server fails fetches fast.
    let gw = Gateway::new(jwks_layer_with_timeout(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(200))
            .min_refetch_interval(Duration::from_millis(100))
            .unknown_kid_wait(Duration::from_millis(300)),
        Duration::from_millis(300),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "before the outage")
        .await;
    assert_eq!(gw.failures(), 0);

    for mode in [Mode::Error, Mode::Hang] {
        server.set_mode(mode);
        let start = gw.failures();
        // Two more failures: at least one fetch started after the switch.
        eventually(
            Duration::from_secs(5),
            &format!("{mode:?} failures"),
            async || {
                gw.expect_ok(
                    &token(&rsa1(), Algorithm::RS256, "k1"),
                    &format!("during {mode:?}"),
                )
                .await;
                gw.failures() >= start + 2
            },
        )
        .await;
        // An unknown kid during the outage is a plain 401, quickly.
        let started = Instant::now();
        gw.expect_refused(
            &token(&rsa2(), Algorithm::RS256, "k2"),
            &format!("k2 during {mode:?}"),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let (fetches, failures) = gw.layer.jwks_fetch_counts();
    assert!(fetches > failures && failures >= 4, "{fetches} {failures}");

    // Recovery with a new key.
    server.publish(jwks(&[
        jwk(&rsa1(), Algorithm::RS256, "k1"),
        jwk(&rsa2(), Algorithm::RS256, "k2"),
    ]));
    server.set_mode(Mode::Serve);
    eventually(
        Duration::from_secs(5),
        "k2 accepted after recovery",
        async || {
            gw.passes(&token(&rsa2(), Algorithm::RS256, "k2"), "k2 after recovery")
                .await
        },
    )
    .await;
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "k1 after recovery")
        .await;
}

/// A JWKS that is unreachable from the start: no keys, every token a 401
/// (never a 5xx), failures counted.
#[tokio::test]
async fn unreachable_jwks_refuses_with_401() {
    // A loopback port that is bound but not listening: connections are
    // refused, and no other test can be given the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let gw = Gateway::new(jwks_layer(
        Issuer::new(ISSUER)
            .audience(AUDIENCE)
            .jwks_url(format!("http://{addr}/jwks")),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(200))
            .min_refetch_interval(Duration::from_millis(100))
            .unknown_kid_wait(Duration::from_millis(200)),
    ));
    assert!(!gw.layer.wait_for_keys(Duration::from_millis(300)).await);
    eventually(Duration::from_secs(5), "a failure is counted", async || {
        gw.failures() >= 1
    })
    .await;
    gw.expect_refused(&token(&rsa1(), Algorithm::RS256, "k1"), "no keys")
        .await;
    assert_eq!(gw.calls(), 0);
}

/// HTML, broken JSON, a document without keys, and a set of only unusable
/// keys are all failures that leave the last good keys in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_documents_keep_last_good_keys() {
    let good = jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")]);
    let server = AuthServer::start(good.clone()).await;
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(150))
            .min_refetch_interval(Duration::from_millis(100))
            .unknown_kid_wait(Duration::from_millis(200)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);

    let unusable = jwks(&[
        // An encryption key, and a key of a type nobody knows.
        {
            let mut k = jwk(&rsa2(), Algorithm::RS256, "enc");
            k["use"] = json!("enc");
            k
        },
        json!({"kty": "XYZ", "kid": "odd"}),
        jwk(
            &EncodingKey::from_secret(HMAC_SECRET),
            Algorithm::HS256,
            "sym",
        ),
    ]);
    let cases: [(&str, Mode, Value); 6] = [
        ("html", Mode::Html, good.clone()),
        ("broken json", Mode::BrokenJson, good.clone()),
        ("keys not an array", Mode::Serve, json!({"keys": "k1"})),
        ("no keys member", Mode::Serve, json!({"issuer": ISSUER})),
        ("empty key set", Mode::Serve, jwks(&[])),
        ("only unusable keys", Mode::Serve, unusable),
    ];
    for (what, mode, doc) in cases {
        {
            let mut s = server.state.lock().unwrap();
            s.mode = mode;
            s.jwks = doc;
        }
        let start = gw.failures();
        eventually(Duration::from_secs(5), what, async || {
            // Fresh tokens: verified with the kept key, not by the cache.
            gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), what)
                .await;
            gw.failures() >= start + 2
        })
        .await;
        // A token of a key that only the garbage document "has" is refused.
        gw.expect_refused(&token(&rsa2(), Algorithm::RS256, "enc"), what)
            .await;
    }
    // Everything since the first load failed.
    let (fetches, failures) = gw.layer.jwks_fetch_counts();
    assert!(failures >= 12 && fetches > failures, "{fetches} {failures}");
}

/// 200 concurrent tokens with random unknown kids: all 401, and the auth
/// server sees at most one refetch per minimum refetch interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_flood_is_rate_limited() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let min_refetch = Duration::from_millis(300);
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_secs(60))
            .min_refetch_interval(min_refetch)
            .unknown_kid_wait(Duration::from_secs(1)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);
    let tokens: Vec<String> = (0..200)
        .map(|_| {
            token(
                &rsa1(),
                Algorithm::RS256,
                &format!("{:016x}", rand::random::<u64>()),
            )
        })
        .collect();
    // Let a refetch become due, so the flood can trigger one.
    server
        .wait_quiet(min_refetch + Duration::from_millis(50))
        .await;

    let hits_before = server.hits();
    let fetches_before = gw.fetches();
    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| tokio::spawn(send(gw.svc.clone(), bearer(&t))))
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();

    for (i, reply) in replies.iter().enumerate() {
        reply.assert_invalid_token(&format!("flood #{i}"));
    }
    assert_eq!(gw.calls(), 0);
    let refetches = server.hits() - hits_before;
    let allowed = (elapsed.as_nanos() / min_refetch.as_nanos()) as usize + 1;
    assert!(refetches >= 1, "the flood never triggered a refetch");
    assert!(
        refetches <= allowed,
        "{refetches} refetches in {elapsed:?} (at most {allowed} allowed)"
    );
    // The layer counts the same fetches (once each has completed).
    eventually(
        Duration::from_secs(2),
        "layer counts the refetches",
        async || gw.fetches() - fetches_before == refetches as u64,
    )
    .await;
    // The real key still works afterwards.
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "after the flood")
        .await;
}

/// OIDC discovery: the JWKS URL comes from the issuer's
/// `/.well-known/openid-configuration`, and is not rediscovered per refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_discovery_finds_the_jwks() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let iss = server.base.clone();
    let gw = Gateway::new(jwks_layer(
        Issuer::new(iss.clone()).audience(AUDIENCE).oidc_discovery(),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(150))
            .min_refetch_interval(Duration::from_millis(100))
            .unknown_kid_wait(Duration::from_millis(200)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "discovery failed");

    let mut c = claims("alice", &["user"]);
    c["iss"] = json!(iss);
    let seen = gw
        .expect_ok(
            &mint_with(&rsa1(), Algorithm::RS256, Some("k1"), &c),
            "discovered",
        )
        .await;
    assert_eq!(seen["iss"], iss.as_str());
    assert_eq!(seen["sub"], "alice");
    // The token must name this issuer.
    gw.expect_refused(
        &token(&rsa1(), Algorithm::RS256, "k1"),
        "iss of another issuer",
    )
    .await;
    let mut trailing = c.clone();
    trailing["iss"] = json!(format!("{iss}/"));
    gw.expect_refused(
        &mint_with(&rsa1(), Algorithm::RS256, Some("k1"), &trailing),
        "iss with /",
    )
    .await;

    eventually(Duration::from_secs(5), "three JWKS refreshes", async || {
        server.hits() >= 3
    })
    .await;
    assert_eq!(server.discovery_hits.load(Ordering::SeqCst), 1);
}

/// A symmetric (`oct`) key in a JWKS is public, so it must never verify
/// anything: HS256 tokens signed with it are refused, with or without kid.
#[tokio::test]
async fn symmetric_key_in_jwks_is_ignored() {
    let secret = b"published-in-the-jwks-0123456789";
    let oct = EncodingKey::from_secret(secret);
    let server = AuthServer::start(jwks(&[
        jwk(&oct, Algorithm::HS256, "sym"),
        {
            let mut k = jwk(&oct, Algorithm::HS256, "sym-noalg");
            k.as_object_mut().unwrap().remove("alg");
            k
        },
        jwk(&rsa1(), Algorithm::RS256, "k1"),
    ]))
    .await;
    let options = JwksOptions::default()
        .refresh_interval(Duration::from_secs(60))
        .min_refetch_interval(Duration::from_secs(30))
        .unknown_kid_wait(Duration::from_millis(200));
    let gw = Gateway::new(jwks_layer(issuer_for(&server), options));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);
    gw.expect_ok(
        &token(&rsa1(), Algorithm::RS256, "k1"),
        "the RSA key of the same set",
    )
    .await;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for kid in [Some("sym"), Some("sym-noalg"), Some("k1"), None] {
            let forged = mint_with(&oct, alg, kid, &claims("mallory", &["admin"]));
            gw.expect_refused(
                &forged,
                &format!("{alg:?} with the published secret, kid {kid:?}"),
            )
            .await;
        }
    }

    // A set of nothing but the symmetric key never yields keys at all.
    let server = AuthServer::start(jwks(&[jwk(&oct, Algorithm::HS256, "sym")])).await;
    let gw = Gateway::new(jwks_layer(issuer_for(&server), options));
    assert!(!gw.layer.wait_for_keys(Duration::from_millis(300)).await);
    eventually(Duration::from_secs(5), "a failure is counted", async || {
        gw.failures() >= 1
    })
    .await;
    gw.expect_refused(
        &mint_with(&oct, Algorithm::HS256, Some("sym"), &valid_claims()),
        "oct only",
    )
    .await;
    assert_eq!(gw.calls(), 0);
}

fn valid_claims() -> Value {
    claims("alice", &["user"])
}

/// RSA (RS and PS), EC (P-256, P-384) and Ed25519 keys from a JWKS verify;
/// a JWK's `alg` (or its curve) pins the algorithms it accepts.
#[tokio::test]
async fn every_key_type_from_jwks_verifies() {
    let ec256 = encoding_key(Algorithm::ES256);
    let ec384 = encoding_key(Algorithm::ES384);
    let ed = encoding_key(Algorithm::EdDSA);
    let without_alg = |mut k: Value| {
        k.as_object_mut().unwrap().remove("alg");
        k
    };
    let server = AuthServer::start(jwks(&[
        jwk(&rsa1(), Algorithm::RS256, "rs256"),
        jwk(&rsa2(), Algorithm::PS384, "ps384"),
        without_alg(jwk(&rsa1(), Algorithm::RS256, "rsa-any")),
        jwk(&ec256, Algorithm::ES256, "es256"),
        jwk(&ec384, Algorithm::ES384, "es384"),
        without_alg(jwk(&ec256, Algorithm::ES256, "p256-noalg")),
        without_alg(jwk(&ec384, Algorithm::ES384, "p384-noalg")),
        ed_jwk("ed"),
        {
            let mut k = ed_jwk("ed-noalg");
            k.as_object_mut().unwrap().remove("alg");
            k
        },
    ]))
    .await;
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_secs(60))
            .min_refetch_interval(Duration::from_secs(30))
            .unknown_kid_wait(Duration::from_millis(200)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);

    let (rsa1, rsa2) = (&rsa1(), &rsa2());
    let accepted: Vec<(&EncodingKey, Algorithm, &str)> = vec![
        (rsa1, Algorithm::RS256, "rs256"),
        (rsa2, Algorithm::PS384, "ps384"),
        (rsa1, Algorithm::RS256, "rsa-any"),
        (rsa1, Algorithm::RS384, "rsa-any"),
        (rsa1, Algorithm::RS512, "rsa-any"),
        (rsa1, Algorithm::PS256, "rsa-any"),
        (rsa1, Algorithm::PS384, "rsa-any"),
        (rsa1, Algorithm::PS512, "rsa-any"),
        (&ec256, Algorithm::ES256, "es256"),
        (&ec384, Algorithm::ES384, "es384"),
        (&ec256, Algorithm::ES256, "p256-noalg"),
        (&ec384, Algorithm::ES384, "p384-noalg"),
        (&ed, Algorithm::EdDSA, "ed"),
        (&ed, Algorithm::EdDSA, "ed-noalg"),
    ];
    for (key, alg, kid) in accepted {
        gw.expect_ok(&token(key, alg, kid), &format!("{alg:?} kid {kid}"))
            .await;
    }
    let refused: Vec<(&EncodingKey, Algorithm, &str, &str)> = vec![
        (rsa1, Algorithm::RS512, "rs256", "alg pinned by the JWK"),
        (rsa1, Algorithm::PS256, "rs256", "PS on an RS256 JWK"),
        (rsa2, Algorithm::RS384, "ps384", "RS on a PS384 JWK"),
        (rsa1, Algorithm::PS384, "ps384", "signed by another RSA key"),
        (
            &ec384,
            Algorithm::ES384,
            "p256-noalg",
            "ES384 on a P-256 key",
        ),
        (&ec256, Algorithm::ES256, "es384", "ES256 on a P-384 key"),
        (&ed, Algorithm::EdDSA, "es256", "EdDSA on an EC key"),
        (&ec256, Algorithm::ES256, "ed", "ES256 on an Ed25519 key"),
    ];
    for (key, alg, kid, what) in refused {
        gw.expect_refused(&token(key, alg, kid), what).await;
    }
}

/// A key published right after a fetch (well inside the minimum refetch
/// interval) is accepted: the request waits for the next allowed fetch
/// instead of being refused. A kid that is never published is refused after
/// one fetch that started after it arrived, not held for the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_published_inside_the_refetch_interval_is_picked_up() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_secs(60))
            .min_refetch_interval(Duration::from_millis(500))
            .unknown_kid_wait(Duration::from_secs(2)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "JWKS never loaded");
    server.publish(jwks(&[
        jwk(&rsa1(), Algorithm::RS256, "k1"),
        jwk(&rsa2(), Algorithm::RS256, "k2"),
    ]));
    let hits = server.hits();
    gw.expect_ok(
        &token(&rsa2(), Algorithm::RS256, "k2"),
        "k2 published right after the initial fetch",
    )
    .await;
    assert_eq!(server.hits(), hits + 1, "exactly one refetch");

    let started = Instant::now();
    gw.expect_refused(
        &token(&rsa1(), Algorithm::RS256, "never-published"),
        "unpublished kid",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "an unpublished kid was held for {:?}",
        started.elapsed()
    );
}

/// The auth server replaces the key behind `k1` without changing the kid. A
/// token signed by the new key fails against the cached key, which triggers
/// a refetch (the request waits for it, bounded by `unknown_kid_wait`), and
/// is then accepted; the old key stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotated_under_the_same_kid_is_refetched() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let min_refetch = Duration::from_millis(300);
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_secs(60))
            .min_refetch_interval(min_refetch)
            .unknown_kid_wait(Duration::from_secs(2)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "JWKS never loaded");
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "before rotation")
        .await;

    server
        .publish_when_quiet(
            jwks(&[jwk(&rsa2(), Algorithm::RS256, "k1")]),
            min_refetch + Duration::from_millis(50),
        )
        .await;
    let hits = server.hits();
    let started = Instant::now();
    gw.expect_ok(
        &token(&rsa2(), Algorithm::RS256, "k1"),
        "new key under the old kid",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.hits(), hits + 1, "exactly one refetch");
    // Repeats of the rotated token are served from the verified-token cache.
    let rotated = token(&rsa2(), Algorithm::RS256, "k1");
    gw.expect_ok(&rotated, "rotated #1").await;
    gw.expect_ok(&rotated, "rotated #2").await;
    gw.expect_refused(
        &token(&rsa1(), Algorithm::RS256, "k1"),
        "old key after rotation",
    )
    .await;
}

/// Forged signatures under a known kid ask for refetches exactly like
/// unknown kids: a burst costs at most one fetch per minimum interval, and
/// the real key keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_signatures_under_a_known_kid_are_rate_limited() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let min_refetch = Duration::from_millis(300);
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server),
        JwksOptions::default()
            .refresh_interval(Duration::from_secs(60))
            .min_refetch_interval(min_refetch)
            .unknown_kid_wait(Duration::from_secs(1)),
    ));
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await);
    // Signed by a key the server never publishes, naming the real kid; half
    // of them repeat, to go through the negative cache as well.
    let forged: Vec<String> = (0..100)
        .map(|_| token(&rsa2(), Algorithm::RS256, "k1"))
        .collect();
    let burst: Vec<String> = forged.iter().chain(forged.iter()).cloned().collect();
    server
        .wait_quiet(min_refetch + Duration::from_millis(50))
        .await;

    let hits_before = server.hits();
    let started = Instant::now();
    let tasks: Vec<_> = burst
        .into_iter()
        .map(|t| tokio::spawn(send(gw.svc.clone(), bearer(&t))))
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    for (i, reply) in replies.iter().enumerate() {
        reply.assert_invalid_token(&format!("forged #{i}"));
    }
    assert_eq!(gw.calls(), 0);
    let refetches = server.hits() - hits_before;
    let allowed = (elapsed.as_nanos() / min_refetch.as_nanos()) as usize + 1;
    assert!(refetches >= 1, "the burst never triggered a refetch");
    assert!(
        refetches <= allowed,
        "{refetches} refetches in {elapsed:?} (at most {allowed} allowed)"
    );
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "after the burst")
        .await;
}

/// A token refused because its kid was not published yet sits in the
/// negative cache, but only until the key set changes: once the refetch it
/// asked for brings the key, the very same token is accepted, long before
/// the negative-cache TTL (here a minute) would have let it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negatively_cached_unknown_kid_is_accepted_after_the_refetch() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    let layer = JwtAuthLayer::builder()
        .issuer(issuer_for(&server))
        .negative_cache_ttl(Duration::from_secs(60))
        .jwks_options(
            JwksOptions::default()
                .refresh_interval(Duration::from_secs(60))
                .min_refetch_interval(Duration::from_millis(300))
                // Refuse at once instead of waiting for the refetch.
                .unknown_kid_wait(Duration::ZERO),
        )
        .http_client(HttpClientConfig::default().native_roots(false))
        .build()
        .unwrap();
    let gw = Gateway::new(layer);
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "JWKS never loaded");
    let early = token(&rsa2(), Algorithm::RS256, "k2");
    gw.expect_refused(&early, "kid not published yet").await;
    gw.expect_refused(&early, "repeat, from the negative cache")
        .await;
    server.publish(jwks(&[
        jwk(&rsa1(), Algorithm::RS256, "k1"),
        jwk(&rsa2(), Algorithm::RS256, "k2"),
    ]));
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the same token is accepted",
        async || gw.passes(&early, "after publication").await,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An issuer with a static key beside its JWKS is not ready until the JWKS
/// was fetched: the provider signs with the published keys.
#[tokio::test]
async fn wait_for_keys_waits_for_the_jwks_even_beside_a_static_key() {
    let server = AuthServer::start(jwks(&[jwk(&rsa1(), Algorithm::RS256, "k1")])).await;
    server.set_mode(Mode::Error);
    let gw = Gateway::new(jwks_layer(
        issuer_for(&server).key(tower_gateway::auth::JwtKey::hmac(
            b"a-static-key-for-service-tokens-0123456789",
        )),
        JwksOptions::default()
            .refresh_interval(Duration::from_millis(100))
            .min_refetch_interval(Duration::from_millis(50)),
    ));
    assert!(
        !gw.layer.wait_for_keys(Duration::from_millis(300)).await,
        "ready before the JWKS was fetched"
    );
    server.set_mode(Mode::Serve);
    assert!(gw.layer.wait_for_keys(KEYS_WAIT).await, "JWKS never loaded");
    gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "k1 once loaded")
        .await;
}

/// A JWKS layer is built before any runtime exists (in a plain `main`,
/// say); its refresh task starts with the first use inside one.
#[test]
fn jwks_layer_builds_outside_a_runtime_and_refreshes_once_served() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(AuthServer::start(jwks(&[jwk(
        &rsa1(),
        Algorithm::RS256,
        "k1",
    )])));
    assert!(tokio::runtime::Handle::try_current().is_err());
    let layer = jwks_layer(issuer_for(&server), JwksOptions::default());
    // Used outside a runtime: nothing to spawn on, nothing panics.
    assert!(
        layer
            .verify(&token(&rsa1(), Algorithm::RS256, "k1"))
            .is_err()
    );
    assert_eq!(server.hits(), 0, "fetched before the layer was served");
    runtime.block_on(async {
        let gw = Gateway::new(layer);
        gw.expect_ok(&token(&rsa1(), Algorithm::RS256, "k1"), "first request")
            .await;
        assert!(gw.fetches() >= 1);
    });
}
