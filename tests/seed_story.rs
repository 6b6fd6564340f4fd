#![cfg(all(
    feature = "jwks",
    feature = "rbac",
    feature = "metrics",
    feature = "ratelimit",
    feature = "proxy",
    feature = "tls",
    feature = "redis",
    feature = "consul"
))]
//! The seed's story, end to end, with chaos (issue 12): two gateways, each
//! started in-process from its config file (`tests/fixtures/seed_story.toml`),
//! in front of two instances of each service (the reference gateway's Order,
//! Payment and Inventory services, over mutual TLS), the development auth
//! server, a real `redis-server` that the two gateways share their limits
//! through, and the Consul API double where the instances are registered and
//! the gateways find them.
//!
//! One test walks through the seed (tokens, roles, refresh and reuse, a
//! limit shared by the two gateways); each of the others injects one fault
//! under a bounded concurrent load (loopback only, bounded in requests and
//! time), asserts what the issue promises, and reads the fault in the
//! gateways' `/metrics`. Every test builds its own system, so they run
//! concurrently and none depends on another's leftovers.
//!
//! Without `redis-server` the tests skip with a banner, as the other Redis
//! tests do (and fail under `CI=true`).

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code)]
mod app;
mod consul_double;
mod support_redis;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use app::{
    auth_server,
    config::{self, ProcessEnv},
    pki::DevPki,
    services::{self, Kind},
};
use bytes::Bytes;
use consul_double::ConsulDouble;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use support_redis::{RedisServer, redis_available};
use tokio::{net::TcpListener, task::JoinHandle};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The story's accounts: the password grant's users (the demo clients are
/// the auth server's own, `auth_server::CLIENTS`). One user per phase that
/// counts a limit, so no phase inherits another's quota.
const USERS: &[auth_server::User] = &[
    auth_server::User {
        name: "alice",
        password: "alice-password",
        roles: &["user"],
    },
    auth_server::User {
        name: "bob",
        password: "bob-password",
        roles: &["user"],
    },
    auth_server::User {
        name: "carol",
        password: "carol-password",
        roles: &["user"],
    },
    auth_server::User {
        name: "root",
        password: "root-password",
        roles: &["admin"],
    },
];

/// The `payments` limit of the fixture (per consumer and minute).
const PAYMENTS_PER_MINUTE: usize = 10;

// ---------------------------------------------------------------------------
// The auth server, and its signing-key rotation.

/// The development auth server (`examples/gateway/auth_server.rs`) on a
/// loopback port. It publishes the key that signs next before it signs
/// with it, and keeps a retired key published until its tokens have
/// expired; `rotate` moves to the next key now, as its interval would.
struct AuthServer {
    addr: SocketAddr,
    handle: auth_server::Handle,
    _task: JoinHandle<()>,
}

impl AuthServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = auth_server::Config::new(format!("http://{addr}"));
        config.users = USERS;
        let server = auth_server::AuthServer::new(config).unwrap();
        let handle = server.handle();
        let router = server.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            handle,
            _task: task,
        }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signs with the next key from now on; the old key stays published.
    async fn rotate(&self) {
        self.handle.rotate_now().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// The system.

/// One service instance, registered in Consul as `id`.
struct Instance {
    id: String,
    /// Its own `/metrics` (prefix `service`): which instance served what.
    metrics: SocketAddr,
    running: Option<services::Instance>,
}

struct Story {
    _dir: TempDir,
    redis: RedisServer,
    consul: ConsulDouble,
    auth: AuthServer,
    instances: Vec<Instance>,
    /// Gateway A and gateway B, each from its own config file.
    gateways: Vec<app::Running>,
    configs: Vec<PathBuf>,
    client: HttpClient,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_story.toml"),
    )
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Story {
    /// Starts everything; `None` (the test skips) without `redis-server`.
    async fn start(name: &str) -> Option<Self> {
        if !redis_available() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "tower-gateway-seed-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let redis = RedisServer::start();
        let consul = ConsulDouble::start().await;
        let auth = AuthServer::start().await;
        let issuer = auth.issuer();

        // Two instances of each service, registered in Consul as another
        // agent would register them.
        let pki = DevPki::generate().unwrap();
        let mut instances = Vec::new();
        for kind in [Kind::Orders, Kind::Payments, Kind::Inventory] {
            for n in 1..=2 {
                let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
                let running = services::spawn(
                    kind,
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    &pki,
                    &issuer,
                    Some(metrics),
                )
                .await
                .unwrap();
                let id = format!("{}-{n}", kind.name());
                consul.register(json!({
                    "ID": id, "Name": kind.name(),
                    "Address": "127.0.0.1", "Port": running.addr.port(),
                }));
                instances.push(Instance {
                    id,
                    metrics,
                    running: Some(running),
                });
            }
        }

        // The gateways, each from a config file of its own.
        let text = fixture()
            .replace("127.0.0.1:9000", &auth.addr.to_string())
            .replace("redis://127.0.0.1:6379/", &redis.url())
            .replace("127.0.0.1:8500", &consul.addr().to_string());
        let mut gateways = Vec::new();
        let mut configs = Vec::new();
        for name in ["gateway-a", "gateway-b"] {
            let home = dir.0.join(name);
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(home.join("ca.pem"), &pki.ca).unwrap();
            std::fs::write(home.join("gateway.pem"), &pki.gateway.chain).unwrap();
            std::fs::write(home.join("gateway-key.pem"), &pki.gateway.key).unwrap();
            let path = home.join("gateway.toml");
            std::fs::write(&path, &text).unwrap();
            let loaded = config::load_file(&path, &ProcessEnv).expect("a valid config");
            let running = app::start_from_config(loaded, Some(path.clone()))
                .await
                .expect("the gateway starts");
            gateways.push(running);
            configs.push(path);
        }
        Some(Self {
            _dir: dir,
            redis,
            consul,
            auth,
            instances,
            gateways,
            configs,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    fn gateway(&self, gw: usize) -> SocketAddr {
        self.gateways[gw].gateway
    }

    fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.gateway).collect()
    }

    fn instance(&self, id: &str) -> &Instance {
        self.instances.iter().find(|i| i.id == id).unwrap()
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.client, request).await
    }

    /// `method path` at gateway `gw`, with a bearer token and a JSON body.
    async fn call(
        &self,
        gw: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway(gw)))
            .header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::default(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn status(&self, gw: usize, method: Method, path: &str, token: &str) -> StatusCode {
        let body = (method == Method::POST).then(|| match path {
            "/payments" => json!({ "order_id": 1, "amount_cents": 1250 }),
            _ => json!({ "item": "book", "quantity": 1 }),
        });
        self.call(gw, method, path, token, body).await.0
    }

    /// `POST /token` with a form (RFC 6749 §4): status and JSON answer.
    async fn token_endpoint(&self, form: &str) -> (StatusCode, Value) {
        let request = Request::post(format!("http://{}/token", self.auth.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        let (status, _, body) = self.send(request).await;
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// The password grant of the public client `demo-cli`: the whole answer.
    async fn login(&self, user: &str) -> Value {
        let (status, answer) = self
            .token_endpoint(&format!(
                "grant_type=password&client_id=demo-cli&username={user}&password={user}-password"
            ))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn access_token(&self, user: &str) -> String {
        self.login(user).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn admin(&self, gw: usize, path: &str) -> (StatusCode, Bytes) {
        let request = Request::get(format!("http://{}{path}", self.gateways[gw].admin))
            .body(Full::default())
            .unwrap();
        let (status, _, body) = self.send(request).await;
        (status, body)
    }

    async fn metrics(&self, gw: usize) -> String {
        let (status, body) = self.admin(gw, "/metrics").await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }

    async fn ready(&self, gw: usize) -> Value {
        serde_json::from_slice(&self.admin(gw, "/readyz").await.1).unwrap()
    }

    async fn config_status(&self, gw: usize) -> Value {
        serde_json::from_slice(&self.admin(gw, "/config").await.1).unwrap()
    }

    /// Requests an instance has served (`service_requests_total`).
    async fn served_by(&self, id: &str) -> f64 {
        let request = Request::get(format!("http://{}/metrics", self.instance(id).metrics))
            .body(Full::default())
            .unwrap();
        let (_, _, body) = self.send(request).await;
        sum(
            &String::from_utf8_lossy(&body),
            "service_requests_total",
            &[],
        )
    }
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered within 10 s")
        .expect("answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

// ---------------------------------------------------------------------------
// Bounded load.

/// Requests per worker at most, and how long a load may last at most: the
/// load ends at the first of the two, or when the test stops it.
const LOAD_REQUESTS_PER_WORKER: usize = 2_000;
const LOAD_DEADLINE: Duration = Duration::from_secs(40);
const LOAD_WORKERS: usize = 4;

/// Concurrent clients, each one request at a time with a pause, spread over
/// both gateways; every answer but 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
}

impl Load {
    /// `GET` of `paths` in turn, with the tokens of `tokens` in turn
    /// (tokens can be added while it runs).
    fn start(
        story: &Story,
        paths: &'static [&'static str],
        tokens: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let gateways = story.gateway_addrs();
        let workers = (0..LOAD_WORKERS)
            .map(|worker| {
                let (stop, tokens, client, gateways) = (
                    stop.clone(),
                    tokens.clone(),
                    story.client.clone(),
                    gateways.clone(),
                );
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    for i in 0..LOAD_REQUESTS_PER_WORKER {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_DEADLINE {
                            break;
                        }
                        let gateway = gateways[(worker + i) % gateways.len()];
                        let path = paths[(worker + i) % paths.len()];
                        let token = {
                            let tokens = tokens.lock().unwrap();
                            tokens[(worker + i) % tokens.len()].clone()
                        };
                        let request = Request::get(format!("http://{gateway}{path}"))
                            .header("authorization", format!("Bearer {token}"))
                            .body(Full::default())
                            .unwrap();
                        let answer =
                            tokio::time::timeout(Duration::from_secs(10), client.request(request))
                                .await;
                        match answer {
                            Ok(Ok(response)) if response.status() == StatusCode::OK => {
                                let _ = response.into_body().collect().await;
                                tally.ok += 1;
                            }
                            Ok(Ok(response)) => {
                                let status = response.status();
                                let body = response.into_body().collect().await;
                                let body = body.map(|b| b.to_bytes()).unwrap_or_default();
                                tally.failures.push(format!(
                                    "GET {path} at {gateway}: {status} {}",
                                    String::from_utf8_lossy(&body)
                                ));
                            }
                            Ok(Err(error)) => tally
                                .failures
                                .push(format!("GET {path} at {gateway}: {error}")),
                            Err(_) => tally
                                .failures
                                .push(format!("GET {path} at {gateway}: no answer in 10 s")),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tally
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the load and asserts that every request succeeded, and that
    /// at least `min_ok` did.
    async fn finish_without_failures(self, min_ok: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            let tally = worker.await.unwrap();
            total.ok += tally.ok;
            total.failures.extend(tally.failures);
        }
        assert!(
            total.failures.is_empty(),
            "{} of {} requests failed under load, first: {:#?}",
            total.failures.len(),
            total.ok + total.failures.len(),
            &total.failures[..total.failures.len().min(5)]
        );
        assert!(total.ok >= min_ok, "only {} requests served", total.ok);
        total.ok
    }
}

fn tokens(list: &[&str]) -> Arc<Mutex<Vec<String>>> {
    Arc::new(Mutex::new(list.iter().map(|t| (*t).to_owned()).collect()))
}

// ---------------------------------------------------------------------------
// Reading /metrics.

/// The sum of the samples of `name` that carry every label of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels.iter().all(|(k, v)| {
                    label_text
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The walk through the seed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walk_tokens_roles_refresh_reuse_and_a_limit_shared_by_two_gateways() {
    let Some(story) = Story::start("walk").await else {
        return;
    };

    // 1. A token with client credentials (RFC 6749 §4.4), and one with a
    //    password (§4.3).
    let (status, service) = story
        .token_endpoint(
            "grant_type=client_credentials&client_id=inventory-sync&client_secret=inventory-sync-secret",
        )
        .await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["token_type"], "Bearer");
    assert!(service.get("refresh_token").is_none(), "§4.4.3: {service}");
    let service = service["access_token"].as_str().unwrap().to_owned();
    for gw in 0..2 {
        assert_eq!(
            story.status(gw, Method::GET, "/inventory", &service).await,
            200
        );
    }
    let alice = story.login("alice").await;
    let user = alice["access_token"].as_str().unwrap().to_owned();
    let admin = story.access_token("root").await;

    // 2. Roles, at both gateways: GET /orders is for admins, POST for users.
    for gw in 0..2 {
        assert_eq!(story.status(gw, Method::GET, "/orders", &user).await, 403);
        assert_eq!(story.status(gw, Method::GET, "/orders", &admin).await, 200);
        let (status, _, body) = story
            .call(
                gw,
                Method::POST,
                "/orders",
                &user,
                Some(json!({ "item": "book", "quantity": 1 })),
            )
            .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let order: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            order["owner"], "alice",
            "the service saw the verified subject"
        );
    }

    // 3. Refresh (RFC 6749 §6): the refresh token rotates; replaying a used
    //    one revokes its family, the successor included.
    let first = alice["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| {
        let story = &story;
        async move {
            story
                .token_endpoint(&format!(
                    "grant_type=refresh_token&client_id=demo-cli&refresh_token={token}"
                ))
                .await
        }
    };
    let (status, refreshed) = refresh(first.clone()).await;
    assert_eq!(status, 200, "{refreshed}");
    let second = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "refresh tokens rotate");
    let renewed = refreshed["access_token"].as_str().unwrap();
    assert_eq!(
        story.status(1, Method::GET, "/inventory", renewed).await,
        200
    );
    let (status, reused) = refresh(first).await;
    assert_eq!(status, 400);
    assert_eq!(reused["error"], "invalid_grant");
    let (status, revoked) = refresh(second).await;
    assert_eq!(status, 400, "the family is revoked: {revoked}");
    assert_eq!(revoked["error"], "invalid_grant");

    // 4. The payments limit, one quota for both gateways (through Redis):
    //    requests alternate between them, exactly the limit passes, then
    //    both answer 429 with Retry-After.
    let mut created = 0;
    for i in 0..PAYMENTS_PER_MINUTE {
        let status = story.status(i % 2, Method::POST, "/payments", &user).await;
        assert_eq!(status, 201, "payment {i}");
        created += 1;
    }
    assert_eq!(created, PAYMENTS_PER_MINUTE);
    for gw in 0..2 {
        let (status, headers, _) = story
            .call(
                gw,
                Method::POST,
                "/payments",
                &user,
                Some(json!({ "order_id": 1, "amount_cents": 1250 })),
            )
            .await;
        assert_eq!(status, 429, "gateway {gw}");
        let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        // One payment per 6 s comes back (10 per minute).
        assert!((1..=6).contains(&retry_after), "Retry-After: {retry_after}");
    }
    // Another consumer's quota is untouched.
    let bob = story.access_token("bob").await;
    assert_eq!(story.status(0, Method::POST, "/payments", &bob).await, 201);
    // The shared state is Redis's.
    let keys = story.redis.cli(&["--scan", "--pattern", "rl:*"]);
    assert!(keys.lines().count() >= 2, "{keys}");

    for gw in 0..2 {
        let metrics = story.metrics(gw).await;
        let limited = sum(
            &metrics,
            "gateway_ratelimit_decisions_total",
            &[("route", "/payments"), ("outcome", "limited")],
        );
        assert!(limited >= 1.0, "gateway {gw}:\n{metrics}");
        let denied = sum(&metrics, "gateway_rbac_denials_total", &[]);
        assert!(denied >= 1.0, "gateway {gw}: the 403 is counted\n{metrics}");
    }
}

// ---------------------------------------------------------------------------
// The faults.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_order_instance_moves_traffic_opens_its_breaker_and_fails_no_idempotent_request()
{
    let Some(mut story) = Story::start("kill").await else {
        return;
    };
    let admin = story.access_token("root").await;
    let load = Load::start(&story, &["/orders"], tokens(&[&admin]));
    // Both instances serve before the fault.
    eventually(
        "both order instances serve",
        Duration::from_secs(10),
        || {
            let story = &story;
            async move {
                story.served_by("orders-1").await > 0.0 && story.served_by("orders-2").await > 0.0
            }
        },
    )
    .await;

    let killed = story
        .instances
        .iter_mut()
        .find(|i| i.id == "orders-1")
        .unwrap();
    killed.running.take().unwrap().kill().await;
    let killed_at = Instant::now();

    // Its breaker opens at both gateways (Consul still lists it: the
    // double never probes, so only the breakers know).
    let opened = |metrics: &str| {
        sum(
            metrics,
            "gateway_circuit_transitions_total",
            &[
                ("upstream", "orders/orders-1"),
                ("from", "closed"),
                ("to", "open"),
            ],
        ) >= 1.0
    };
    eventually("orders-1's breaker opens", Duration::from_secs(20), || {
        let story = &story;
        async move { opened(&story.metrics(0).await) && opened(&story.metrics(1).await) }
    })
    .await;
    eprintln!("breakers open {:?} after the kill", killed_at.elapsed());

    // Traffic has moved: what the gateways serve, orders-2 serves.
    let before = story.served_by("orders-2").await;
    for i in 0..20 {
        assert_eq!(
            story.status(i % 2, Method::GET, "/orders", &admin).await,
            200
        );
    }
    assert!(story.served_by("orders-2").await >= before + 20.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures(50).await;

    for gw in 0..2 {
        let metrics = story.metrics(gw).await;
        let closed = sum(
            &metrics,
            "gateway_circuit_state",
            &[("upstream", "orders/orders-1"), ("state", "closed")],
        );
        assert_eq!(
            closed, 0.0,
            "gateway {gw}: orders-1 is not closed\n{metrics}"
        );
        let healthy = sum(
            &metrics,
            "gateway_circuit_state",
            &[("upstream", "orders/orders-2"), ("state", "closed")],
        );
        assert_eq!(healthy, 1.0, "gateway {gw}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_fails_no_request() {
    let Some(story) = Story::start("rotate").await else {
        return;
    };
    let old = story.access_token("root").await;
    let load_tokens = tokens(&[&old]);
    let load = Load::start(&story, &["/orders", "/inventory"], load_tokens.clone());
    // Let the load run on the old key for a moment first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = story.auth.handle.next_kid();
    assert!(next.is_some(), "the next key is published before it signs");
    let refreshes = |metrics: &str| {
        sum(
            metrics,
            "gateway_jwks_refreshes_total",
            &[("result", "success")],
        )
    };
    let before = [
        refreshes(&story.metrics(0).await),
        refreshes(&story.metrics(1).await),
    ];

    story.auth.rotate().await;
    let new = story.access_token("root").await;
    assert_ne!(kid(&new), kid(&old), "a new signing key");
    assert_eq!(
        Some(kid(&new)),
        next,
        "the key published in advance signs now"
    );
    // Clients with new tokens join clients whose old tokens are still valid.
    load_tokens.lock().unwrap().push(new.clone());
    for gw in 0..2 {
        assert_eq!(story.status(gw, Method::GET, "/orders", &new).await, 200);
        assert_eq!(story.status(gw, Method::GET, "/orders", &old).await, 200);
    }
    let user = story.access_token("alice").await;
    assert_eq!(story.status(0, Method::GET, "/orders", &user).await, 403);
    assert_eq!(story.status(1, Method::POST, "/orders", &user).await, 201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish_without_failures(100).await;

    for (gw, before) in before.into_iter().enumerate() {
        let metrics = story.metrics(gw).await;
        // The gateway had the new key before it signed anything: no fetch
        // on demand was needed, and no token was refused.
        assert_eq!(refreshes(&metrics), before, "gateway {gw}\n{metrics}");
        let refused = sum(&metrics, "gateway_auth_failures_total", &[]);
        assert_eq!(
            refused, 0.0,
            "gateway {gw}: no token was refused\n{metrics}"
        );
    }
}

/// The `kid` of a JWT's header.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back_applies_the_local_fallback_then_limits_are_exact_again() {
    let Some(mut story) = Story::start("redis").await else {
        return;
    };
    let admin = story.access_token("root").await;
    let bob = story.access_token("bob").await;
    let carol = story.access_token("carol").await;
    let load = Load::start(&story, &["/inventory", "/orders"], tokens(&[&admin]));

    story.redis.kill();
    let fallback_active = |ready: Value| ready["redis"] == "unavailable, local fallback active";
    eventually("both gateways report the fallback", Duration::from_secs(10), || {
        let story = &story;
        async move { fallback_active(story.ready(0).await) && fallback_active(story.ready(1).await) }
    })
    .await;
    // The documented policy (`on_backend_error = "local"`, CONFIG.md): each
    // gateway decides alone, on `fallback_share` (0.5) of the limit: 5 of
    // the 10 payments a minute, at each gateway.
    let share = PAYMENTS_PER_MINUTE / 2;
    for gw in 0..2 {
        for i in 0..share {
            let status = story.status(gw, Method::POST, "/payments", &bob).await;
            assert_eq!(status, 201, "gateway {gw}, payment {i}");
        }
        let (status, headers, _) = story
            .call(
                gw,
                Method::POST,
                "/payments",
                &bob,
                Some(json!({ "order_id": 1, "amount_cents": 1 })),
            )
            .await;
        assert_eq!(status, 429, "gateway {gw}: its local share is spent");
        assert!(headers.contains_key("retry-after"));
    }
    for gw in 0..2 {
        let metrics = story.metrics(gw).await;
        let fallback = sum(
            &metrics,
            "gateway_ratelimit_decisions_total",
            &[("route", "/payments"), ("outcome", "fallback")],
        );
        assert!(fallback >= (share + 1) as f64, "gateway {gw}\n{metrics}");
        let ready = story.ready(gw).await;
        assert_eq!(ready["ready"], true, "the fallback keeps it ready: {ready}");
    }

    // Redis is back (empty, on the same port): decisions are shared again.
    story.redis.restart();
    let available = |ready: Value| ready["redis"] == "available";
    eventually(
        "both gateways use Redis again",
        Duration::from_secs(10),
        || {
            let story = &story;
            async move { available(story.ready(0).await) && available(story.ready(1).await) }
        },
    )
    .await;
    let before: Vec<f64> = {
        let mut counts = Vec::new();
        for gw in 0..2 {
            counts.push(sum(
                &story.metrics(gw).await,
                "gateway_ratelimit_decisions_total",
                &[("route", "/payments"), ("outcome", "fallback")],
            ));
        }
        counts
    };
    let mut passed = 0;
    for i in 0..PAYMENTS_PER_MINUTE + 4 {
        match story.status(i % 2, Method::POST, "/payments", &carol).await {
            StatusCode::CREATED => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("payment {i}: {other}"),
        }
    }
    assert_eq!(
        passed, PAYMENTS_PER_MINUTE,
        "one exact quota across both gateways"
    );
    for (gw, before) in before.into_iter().enumerate() {
        let after = sum(
            &story.metrics(gw).await,
            "gateway_ratelimit_decisions_total",
            &[("route", "/payments"), ("outcome", "fallback")],
        );
        assert_eq!(
            after, before,
            "gateway {gw}: no fallback once Redis is back"
        );
    }
    load.finish_without_failures(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_down_keeps_the_last_known_instances_serving() {
    let Some(story) = Story::start("consul").await else {
        return;
    };
    let admin = story.access_token("root").await;
    let load = Load::start(&story, &["/orders", "/inventory"], tokens(&[&admin]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    story.consul.stop().await;
    let staleness = |metrics: &str, service: &str| {
        sum(
            metrics,
            "gateway_discovery_staleness_seconds",
            &[("service", service)],
        )
    };
    eventually(
        "the gateways see Consul down",
        Duration::from_secs(10),
        || {
            let story = &story;
            async move {
                let (a, b) = (story.metrics(0).await, story.metrics(1).await);
                ["orders", "payments", "inventory"]
                    .iter()
                    .all(|s| staleness(&a, s) > 0.0 && staleness(&b, s) > 0.0)
            }
        },
    )
    .await;
    // Served from the last known instances, all of them, for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let user = story.access_token("alice").await;
    for gw in 0..2 {
        assert_eq!(
            story.status(gw, Method::POST, "/payments", &user).await,
            201
        );
        let ready = story.ready(gw).await;
        assert_eq!(
            ready["upstream_endpoints"],
            json!({ "orders": 2, "payments": 2, "inventory": 2 }),
            "{ready}"
        );
    }

    // Consul is back: the watches catch up (their retry backs off from 1 s).
    story.consul.resume().await;
    eventually("discovery is fresh again", Duration::from_secs(20), || {
        let story = &story;
        async move {
            let (a, b) = (story.metrics(0).await, story.metrics(1).await);
            staleness(&a, "orders") == 0.0 && staleness(&b, "orders") == 0.0
        }
    })
    .await;
    load.finish_without_failures(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_reloads_under_load_and_a_broken_one_is_refused() {
    let Some(story) = Story::start("reload").await else {
        return;
    };
    let admin = story.access_token("root").await;
    let user = story.access_token("alice").await;
    let load = Load::start(&story, &["/orders", "/inventory"], tokens(&[&admin]));
    assert_eq!(story.status(0, Method::GET, "/inventory", &user).await, 200);

    // Gateway A's file changes: listing the inventory becomes an admin's
    // business (the services accept either; the gateway decides).
    let original = std::fs::read_to_string(&story.configs[0]).unwrap();
    let everyone = r#"rules = [{ methods = ["GET"], allow = "authenticated" }]"#;
    assert_eq!(original.matches(everyone).count(), 1);
    let changed = original.replace(
        everyone,
        r#"rules = [{ methods = ["GET"], roles = ["admin"] }]"#,
    );
    std::fs::write(&story.configs[0], &changed).unwrap();
    let version = config::digest(changed.as_bytes());
    eventually(
        "the changed file is applied",
        Duration::from_secs(10),
        || {
            let story = &story;
            let version = version.clone();
            async move { story.config_status(0).await["version"] == version.as_str() }
        },
    )
    .await;
    assert_eq!(story.status(0, Method::GET, "/inventory", &user).await, 403);
    assert_eq!(
        story.status(1, Method::GET, "/inventory", &user).await,
        200,
        "B keeps its own file"
    );

    // A broken file: refused, with the field and a suggestion; the changed
    // configuration keeps serving.
    std::fs::write(
        &story.configs[0],
        changed.replace("per_second = 20", "per_secnd = 20"),
    )
    .unwrap();
    eventually(
        "the broken file is refused",
        Duration::from_secs(10),
        || {
            let story = &story;
            async move { !story.config_status(0).await["last_error"].is_null() }
        },
    )
    .await;
    let status = story.config_status(0).await;
    assert_eq!(status["version"], version.as_str());
    assert_eq!(
        status["last_error"]["errors"][0],
        "ratelimit.limits.per_consumer.per_secnd: unknown field `per_secnd`; did you mean `per_second`?"
    );
    assert_eq!(story.status(0, Method::GET, "/inventory", &user).await, 403);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_without_failures(50).await;

    let metrics = story.metrics(0).await;
    for (result, count) in [("success", 1.0), ("failure", 1.0)] {
        assert_eq!(
            sum(
                &metrics,
                "gateway_config_reload_total",
                &[("result", result)]
            ),
            count,
            "{result}\n{metrics}"
        );
    }
    let untouched = story.metrics(1).await;
    assert_eq!(
        sum(&untouched, "gateway_config_reload_total", &[]),
        0.0,
        "{untouched}"
    );
}
