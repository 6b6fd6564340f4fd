//! `RateLimitLayer` against a real `redis-server` started on a free
//! loopback port: exact limits across two gateways, GCRA timing on Redis's
//! clock, failure policies when Redis is killed or frozen, recovery, the
//! exhausted-key memory, script reloads, key structure and expiry.
#![cfg(feature = "redis")]
mod support_redis;

use std::{
    convert::Infallible,
    task::Poll,
    time::{Duration, Instant},
};

use http::{HeaderName, Request, Response, StatusCode, header};
use support_redis::{RedisServer, redis_available};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_gateway::{
    ratelimit::{
        FailurePolicy, Header, Limit, MissingKey, QuotaHeaders, RateLimitLayer, RedisBackend,
        RedisConfig, Window,
    },
    reject::{RenderLayer, ResponseBody},
};

type Res = Response<ResponseBody<String>>;

/// The layer's decisions by outcome, as its metrics count them.
#[cfg(feature = "metrics")]
#[derive(Default, Clone)]
struct Outcomes(tower_gateway::metrics::GatewayMetrics);

#[cfg(feature = "metrics")]
impl Outcomes {
    fn handle(&self) -> tower_gateway::ratelimit::RateLimitMetrics {
        tower_gateway::ratelimit::RateLimitMetrics::new(&self.0)
    }

    /// The sum over every route.
    fn get(&self, outcome: &str) -> u64 {
        let label = format!(r#"outcome="{outcome}"}} "#);
        self.0
            .encode()
            .lines()
            .filter(|line| line.starts_with("gateway_ratelimit_decisions_total{"))
            .filter_map(|line| line.split_once(&label)?.1.parse::<u64>().ok())
            .sum()
    }
}

fn api_key() -> Header {
    Header::new(HeaderName::from_static("x-api-key"))
}

fn config() -> RedisConfig {
    RedisConfig::default()
        .timeout(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(200))
}

async fn backend(server: &RedisServer, config: RedisConfig) -> RedisBackend {
    RedisBackend::connect(&server.url(), config)
        .await
        .expect("connect to redis")
}

/// A gateway: the layer over a service that answers "ok".
fn gateway(
    layer: RateLimitLayer,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    RenderLayer::new().layer(layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    })))
}

fn request(key: &str) -> Request<String> {
    Request::builder()
        .uri("/orders")
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

async fn send<S>(svc: &S, key: &str) -> Res
where
    S: Service<Request<String>, Response = Res, Error = Infallible> + Clone,
{
    svc.clone().oneshot(request(key)).await.unwrap()
}

/// Sends `n` requests for `key` at once, spread over `gateways`; returns
/// how many were admitted.
async fn burst<S>(gateways: &[S], key: &str, n: usize) -> usize
where
    S: Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
{
    let mut tasks = Vec::new();
    for i in 0..n {
        let svc = gateways[i % gateways.len()].clone();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(request(&key)).await.unwrap().status()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_exact_across_two_gateways() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let limit = Limit::new().per_hour(50);
    // Two gateways: separate connections, separate layers, one Redis.
    let gateways = [
        gateway(
            RateLimitLayer::builder()
                .key(api_key())
                .limit(limit.clone())
                .redis(backend(&server, config()).await)
                .build()
                .unwrap(),
        ),
        gateway(
            RateLimitLayer::builder()
                .key(api_key())
                .limit(limit)
                .redis(backend(&server, config()).await)
                .build()
                .unwrap(),
        ),
    ];
    assert_eq!(burst(&gateways, "alice", 200).await, 50);
    // Another key is untouched by alice's exhaustion.
    let bob = send(&gateways[1], "bob").await;
    assert_eq!(bob.status(), StatusCode::OK);
    assert_eq!(bob.headers()["ratelimit"], r#""hour";r=49;t=72"#);
    assert_eq!(
        send(&gateways[0], "alice").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_several_windows_never_over_consume() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    // The day window (20) runs out long before the hour window (100).
    let limit = Limit::new().per_hour(100).per_day(20);
    let layer = |b| {
        RateLimitLayer::builder()
            .key(api_key())
            .limit(limit.clone())
            .redis(b)
            .build()
            .unwrap()
    };
    let gateways = [
        gateway(layer(backend(&server, config()).await)),
        gateway(layer(backend(&server, config()).await)),
    ];
    assert_eq!(burst(&gateways, "carol", 120).await, 20);
    // 100 refusals charged the hour window nothing: exactly 20 are gone.
    let refused = send(&gateways[0], "carol").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let rate = refused.headers()["ratelimit"].to_str().unwrap();
    assert!(rate.starts_with(r#""hour";r=80;"#), "{rate}");
    assert!(rate.contains(r#""day";r=0;"#), "{rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_redis_gcra_burst_steady_rate_and_retry_after() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            // 5 per second, bursts of 5.
            .limit(Limit::new().per_second(5))
            .redis(backend(&server, config()).await)
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        assert_eq!(send(&svc, "dave").await.status(), StatusCode::OK);
    }
    let refused = send(&svc, "dave").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    // Steady rate: one request every 200 ms, never two.
    tokio::time::sleep(Duration::from_millis(230)).await;
    assert_eq!(send(&svc, "dave").await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, "dave").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Retry-After to the second: 1 request per 3 s.
    let slow = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().window(Window::new("w", 1, Duration::from_secs(3))))
            .redis(backend(&server, config()).await)
            .build()
            .unwrap(),
    );
    assert_eq!(send(&slow, "erin").await.status(), StatusCode::OK);
    let refused = send(&slow, "erin").await;
    assert_eq!(refused.headers()[header::RETRY_AFTER], "3");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = send(&slow, "erin").await;
    assert_eq!(refused.headers()[header::RETRY_AFTER], "2");
}

/// Layers with each failure policy over one Redis, for the fault tests.
#[cfg(feature = "metrics")]
async fn fault_gateways(
    server: &RedisServer,
    outcomes: &Outcomes,
) -> Vec<(
    FailurePolicy,
    impl Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static,
)> {
    let mut out = Vec::new();
    for policy in [
        FailurePolicy::Allow,
        FailurePolicy::Deny,
        FailurePolicy::Local,
    ] {
        let layer = RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_hour(3))
            .scope(format!("{policy:?}"))
            .redis(backend(server, config()).await)
            .on_backend_error(policy)
            .metrics(outcomes.handle())
            .build()
            .unwrap();
        out.push((policy, gateway(layer)));
    }
    out
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_redis_killed_each_policy_then_restarted() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    let outcomes = Outcomes::default();
    let gateways = fault_gateways(&server, &outcomes).await;
    for (_, svc) in &gateways {
        assert_eq!(send(svc, "frank").await.status(), StatusCode::OK);
    }
    server.kill();
    for (policy, svc) in &gateways {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            statuses.push(send(svc, "frank").await.status());
            // Never past the timeout (100 ms), with slack for a busy machine.
            assert!(started.elapsed() < Duration::from_millis(400));
        }
        match policy {
            FailurePolicy::Allow => assert!(statuses.iter().all(|s| *s == StatusCode::OK)),
            FailurePolicy::Deny => {
                assert!(
                    statuses
                        .iter()
                        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
                );
                let denied = send(svc, "frank").await;
                assert_eq!(denied.headers()[header::RETRY_AFTER], "1");
            }
            // The local fallback enforces the limit on its own: 3 per hour.
            FailurePolicy::Local => assert_eq!(
                statuses,
                [
                    StatusCode::OK,
                    StatusCode::OK,
                    StatusCode::OK,
                    StatusCode::TOO_MANY_REQUESTS,
                    StatusCode::TOO_MANY_REQUESTS
                ]
            ),
            _ => unreachable!(),
        }
    }
    assert!(outcomes.get("backend_error") >= 11);
    assert_eq!(outcomes.get("fallback"), 5);

    // Redis returns (empty): distributed limiting resumes within a second.
    server.restart();
    let (_, local) = &gateways[2];
    let deadline = Instant::now() + Duration::from_secs(1);
    let fallbacks = outcomes.get("fallback");
    let allowed = outcomes.get("allowed");
    loop {
        send(local, "grace").await;
        if outcomes.get("allowed") > allowed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still falling back a second after redis returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(outcomes.get("fallback") > fallbacks, "the outage was seen");
    // State is in Redis again: a fresh key has its full quota there.
    let resumed = send(local, "heidi").await;
    assert_eq!(resumed.headers()["ratelimit"], r#""hour";r=2;t=1200"#);
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_redis_frozen_costs_one_timeout_per_probe_interval() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let redis = backend(
        &server,
        config()
            .timeout(Duration::from_millis(100))
            .failure_threshold(3)
            .probe_interval(Duration::from_millis(200)),
    )
    .await;
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_second(1000))
            .redis(redis.clone())
            .on_backend_error(FailurePolicy::Allow)
            .build()
            .unwrap(),
    );
    assert_eq!(send(&svc, "ivan").await.status(), StatusCode::OK);
    let calls_before = redis.stats().calls;

    // Frozen: connections stay open, nothing answers, only timeouts tell.
    server.freeze();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        // Ten concurrent requests at a time.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let status = svc.oneshot(request("ivan")).await.unwrap().status();
                (status, t.elapsed())
            }));
        }
        for task in tasks {
            let (status, took) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            slowest = slowest.max(took);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.thaw();
    let stats = redis.stats();
    assert!(
        slowest < Duration::from_millis(350),
        "a request waited {slowest:?}"
    );
    // The first batch waits out the timeout (up to 10 calls); after that at
    // most one probe per 200 ms goes to Redis — not one call per request.
    let calls = stats.calls - calls_before;
    assert!(
        calls <= 10 + 8,
        "{calls} calls to a frozen redis for {sent} requests"
    );
    assert_eq!(stats.short_circuited, sent - calls);
    assert_eq!(stats.errors, calls, "every call to the frozen redis failed");
    assert!(sent > 100, "only {sent} requests sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_exhausted_keys_are_remembered_locally() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let make = |redis: RedisBackend| {
        gateway(
            RateLimitLayer::builder()
                .key(api_key())
                .limit(Limit::new().per_hour(5))
                .redis(redis)
                .headers(QuotaHeaders::default().kong(true))
                .build()
                .unwrap(),
        )
    };
    let remembering = backend(&server, config()).await;
    let forgetful = backend(&server, config().remember_exhausted(false)).await;
    for (redis, key) in [(&remembering, "judy"), (&forgetful, "ken")] {
        let svc = make(redis.clone());
        for _ in 0..5 {
            assert_eq!(send(&svc, key).await.status(), StatusCode::OK);
        }
        let evalsha_before = server.command_calls("evalsha");
        let calls_before = redis.stats().calls;
        for _ in 0..200 {
            let refused = send(&svc, key).await;
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
            // Remembered refusals carry the same headers as Redis's.
            assert_eq!(refused.headers()[header::RETRY_AFTER], "720");
            assert_eq!(refused.headers()["x-ratelimit-remaining-hour"], "0");
            assert_eq!(refused.headers()["x-ratelimit-limit-hour"], "5");
        }
        let round_trips = server.command_calls("evalsha") - evalsha_before;
        assert_eq!(round_trips, redis.stats().calls - calls_before);
        if redis.stats().remembered > 0 {
            // Only the first refusal went to Redis.
            assert_eq!(round_trips, 1, "with the memory");
            assert_eq!(redis.stats().remembered, 199);
        } else {
            assert_eq!(round_trips, 200, "without the memory");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_script_reloaded_after_flush() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let redis = backend(&server, config()).await;
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_hour(10))
            .redis(redis.clone())
            .on_backend_error(FailurePolicy::Deny)
            .build()
            .unwrap(),
    );
    // The very first call finds no script either.
    assert_eq!(send(&svc, "liam").await.status(), StatusCode::OK);
    assert_eq!(send(&svc, "liam").await.status(), StatusCode::OK);
    assert_eq!(redis.stats().script_loads, 1);
    server.cli(&["SCRIPT", "FLUSH"]);
    let ok = send(&svc, "liam").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit"], r#""hour";r=7;t=1080"#);
    assert_eq!(redis.stats().script_loads, 2);
    assert_eq!(redis.stats().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_keys_keep_their_structure_and_expire() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let redis = backend(&server, config().prefix("gw:")).await;
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_second(10).per_minute(100))
            .scope("orders")
            .redis(redis.clone())
            .on_missing_key(MissingKey::Reject)
            .build()
            .unwrap(),
    );
    // Braces, separators and escapes from the client stay inside the tag.
    let hostile = "}{x}:gw:{y;s=other;";
    assert_eq!(send(&svc, hostile).await.status(), StatusCode::OK);
    let keys = server.cli(&["--scan", "--pattern", "gw:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(
            key.starts_with(
                "gw:{s=orders;t=;h%3Ax-api-key=%7D%7Bx%7D%3Agw%3A%7By%3Bs%3Dother%3B;}:"
            ),
            "{key}"
        );
        // Expiring when the window is full again: ≤ 100 ms and ≤ 600 ms.
        let ttl: i64 = server.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= 600, "{key}: {ttl}");
    }
    // Over-long key material reaches Redis only as its digest.
    let long = "k".repeat(300);
    assert_eq!(send(&svc, &long).await.status(), StatusCode::OK);
    let all = server.cli(&["--scan", "--pattern", "gw:*"]);
    assert!(all.lines().any(|k| k.contains("h%3Ax-api-key=#")), "{all}");
    assert!(!all.contains("kkkk"), "{all}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    for key in &keys {
        assert_eq!(server.cli(&["EXISTS", key]).trim(), "0", "{key} expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_redis_calls_the_service_that_was_polled_ready() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .key(api_key())
        .limit(Limit::new().per_hour(1))
        .redis(backend(&server, config()).await)
        .build()
        .unwrap();
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<String>, Response<String>, _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    // The decision needs a round trip: the ready mock travels with the
    // request, and a clone that was never polled ready (the mock panics if
    // it is called) stays behind.
    let response = tokio::spawn(svc.call(request("mia")));
    let (reached, reply) = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
        .await
        .expect("the request never reached the ready service")
        .unwrap();
    assert_eq!(reached.headers()["x-api-key"], "mia");
    reply.send_response(Response::new(String::from("upstream")));
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""hour";r=0;t=3600"#);

    // The clone left behind needs its own readiness.
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    // A refused request never reaches the inner service.
    let refused = svc.call(request("mia")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let next = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
    assert!(next.is_err(), "the refused request reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_local_and_redis_send_the_same_headers() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let build = |redis: Option<RedisBackend>| {
        let builder = RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_minute(30).per_hour(3))
            .headers(QuotaHeaders::default().kong(true));
        match redis {
            Some(redis) => builder.redis(redis),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let local = gateway(build(None));
    let shared = gateway(build(Some(backend(&server, config()).await)));
    let names = [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit-minute",
        "x-ratelimit-remaining-minute",
        "x-ratelimit-limit-hour",
        "x-ratelimit-remaining-hour",
        "retry-after",
    ];
    for i in 0..5 {
        let a = send(&local, "nina").await;
        let b = send(&shared, "nina").await;
        assert_eq!(a.status(), b.status(), "request {i}");
        for name in names {
            assert_eq!(
                a.headers().get(name),
                b.headers().get(name),
                "request {i}: {name}"
            );
        }
        if i == 3 {
            assert_eq!(
                b.headers()["ratelimit"],
                r#""minute";r=27;t=6, "hour";r=0;t=3600"#
            );
            assert_eq!(b.headers()[header::RETRY_AFTER], "1200");
        }
    }
}

/// A lazily connected backend and its layer are built before any runtime
/// exists; the first decision connects, inside the runtime that serves it.
#[test]
fn ratelimit_redis_lazy_backend_builds_outside_a_runtime() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    assert!(tokio::runtime::Handle::try_current().is_err());
    let layer = RateLimitLayer::builder()
        .key(api_key())
        .limit(Limit::new().per_hour(2))
        .redis(RedisBackend::connect_lazy(&server.url(), config()).unwrap())
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let gw = gateway(layer);
        assert_eq!(send(&gw, "carol").await.status(), StatusCode::OK);
        assert_eq!(send(&gw, "carol").await.status(), StatusCode::OK);
        assert_eq!(
            send(&gw, "carol").await.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the limit was not enforced through redis"
        );
    });
    assert!(server.command_calls("evalsha") + server.command_calls("eval") >= 3);
}

/// Per-route limits (`Route::rate_limit`, `RouteRateLimitLayer`) with a
/// Redis limit first: the decision waits for Redis, then the route's second
/// (local) limit decides, then the inner service is called; a route
/// without limits is not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_limits_wait_for_redis_then_apply_the_next_limit() {
    if !redis_available() {
        return;
    }
    use tower_gateway::{
        ratelimit::RouteRateLimitLayer,
        route::{Route, RouteLayer, Routes},
    };
    let server = RedisServer::start();
    let shared = RateLimitLayer::builder()
        .key(api_key())
        .limit(Limit::new().per_hour(3))
        .scope("orders-shared")
        .redis(backend(&server, config()).await)
        .build()
        .unwrap();
    let local = RateLimitLayer::builder()
        .key(api_key())
        .limit(Limit::new().per_hour(100))
        .scope("orders-local")
        .build()
        .unwrap();
    let routes = Routes::builder()
        .route(
            Route::prefix("/orders")
                .rate_limit(&shared)
                .rate_limit(&local),
        )
        .route(Route::prefix("/health"))
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(RenderLayer::new())
        .layer(RouteLayer::new(&routes))
        .layer(RouteRateLimitLayer::new())
        .service(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(send(&svc, "k1").await.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The admitted responses carry the quota headers of the last limit that
    // admitted them (the local one: 100 per hour).
    let other = send(&svc, "k2").await;
    assert_eq!(other.status(), StatusCode::OK);
    // The local limit's policy (100 per hour), not the Redis one (3).
    assert_eq!(
        other.headers()["ratelimit-policy"],
        r#""hour";q=100;w=3600"#
    );
    for _ in 0..10 {
        let response = svc
            .clone()
            .oneshot(
                Request::get("/health")
                    .header("x-api-key", "k1")
                    .body(String::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
