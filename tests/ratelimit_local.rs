//! `RateLimitLayer` with the local limiter (no Redis): GCRA timing on
//! Tokio's paused clock, multi-window decisions, headers (IETF, Kong,
//! hidden, gRPC), keys from verified data only, hostile key material,
//! tiers, trusted proxies, readiness, and memory that bounds itself.
#![cfg(feature = "ratelimit")]

use std::{convert::Infallible, task::Poll, time::Duration};

use http::{HeaderName, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_gateway::{
    identity::{Identity, RoleSource},
    ratelimit::{
        ClientAddr, ClientIp, Consumer, Fixed, Header, KeyExtractor, Limit, LocalLimiter,
        MissingKey, QuotaHeaders, RateLimitLayer, Route, Window,
    },
    reject::{RenderLayer, ResponseBody},
    route::RouteTemplate,
};
use tower_test::mock;

type Res = Response<ResponseBody<String>>;

fn gateway(
    layer: RateLimitLayer,
) -> impl Service<Request<String>, Response = Res, Error = Infallible> + Clone {
    RenderLayer::new().layer(layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    })))
}

fn identity(sub: &str, roles: &[&str], extra: serde_json::Value) -> Identity {
    let mut claims = json!({ "iss": "https://auth.test", "sub": sub, "roles": roles });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Identity::from_claims(claims.as_object().cloned().unwrap(), &RoleSource::default())
}

fn with_identity(id: Identity) -> Request<String> {
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(id);
    req
}

fn with_key(key: &str) -> Request<String> {
    Request::builder()
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

async fn send<S>(svc: &S, req: Request<String>) -> Res
where
    S: Service<Request<String>, Response = Res, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn api_key() -> Header {
    Header::new(HeaderName::from_static("x-api-key"))
}

#[tokio::test(start_paused = true)]
async fn ratelimit_local_burst_then_steady_rate_on_paused_time() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_second(5))
            .build()
            .unwrap(),
    );
    for remaining in (0..5).rev() {
        let ok = send(&svc, with_key("a")).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()["ratelimit"],
            format!(r#""second";r={remaining};t=1"#)
        );
    }
    let refused = send(&svc, with_key("a")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    assert_eq!(refused.headers()["ratelimit"], r#""second";r=0;t=1"#);
    // Steady rate: one request per 200 ms.
    tokio::time::advance(Duration::from_millis(199)).await;
    assert_eq!(
        send(&svc, with_key("a")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&svc, with_key("a")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, with_key("a")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // No double burst: a second later, exactly 5 more.
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut ok = 0;
    for _ in 0..20 {
        if send(&svc, with_key("a")).await.status() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_local_retry_after_is_correct_to_the_second() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().window(Window::new("w", 1, Duration::from_secs(10))))
            .build()
            .unwrap(),
    );
    assert_eq!(send(&svc, with_key("a")).await.status(), StatusCode::OK);
    let retry = |r: &Res| {
        r.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(retry(&send(&svc, with_key("a")).await), "10");
    tokio::time::advance(Duration::from_millis(2500)).await;
    // 7.5 s left: rounded up, so a client waiting that long is admitted.
    assert_eq!(retry(&send(&svc, with_key("a")).await), "8");
    tokio::time::advance(Duration::from_millis(7499)).await;
    assert_eq!(retry(&send(&svc, with_key("a")).await), "1");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&svc, with_key("a")).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_local_windows_are_decided_together() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_second(2).per_minute(3))
            .build()
            .unwrap(),
    );
    send(&svc, with_key("a")).await;
    send(&svc, with_key("a")).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let third = send(&svc, with_key("a")).await;
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(
        third.headers()["ratelimit"],
        r#""second";r=1;t=1, "minute";r=0;t=59"#
    );
    // The minute window refuses; the second window keeps its one request
    // however often that happens.
    for _ in 0..10 {
        let refused = send(&svc, with_key("a")).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.headers()["ratelimit"],
            r#""second";r=1;t=1, "minute";r=0;t=59"#
        );
        assert_eq!(refused.headers()[header::RETRY_AFTER], "19");
    }
}

#[tokio::test(start_paused = true)]
async fn ratelimit_local_kong_and_hidden_headers() {
    let limit = Limit::new().per_second(5).per_hour(1000);
    let kong = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(limit.clone())
            .headers(QuotaHeaders::default().ietf(false).kong(true))
            .build()
            .unwrap(),
    );
    let ok = send(&kong, with_key("a")).await;
    let h = ok.headers();
    assert_eq!(h["x-ratelimit-limit-second"], "5");
    assert_eq!(h["x-ratelimit-remaining-second"], "4");
    assert_eq!(h["x-ratelimit-limit-hour"], "1000");
    assert_eq!(h["x-ratelimit-remaining-hour"], "999");
    assert!(!h.contains_key("ratelimit"));

    let hidden = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(limit)
            .headers(QuotaHeaders::default().kong(true).hidden(true))
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        let ok = send(&hidden, with_key("a")).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.headers().is_empty(), "{:?}", ok.headers());
    }
    let refused = send(&hidden, with_key("a")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    assert!(!refused.headers().contains_key("ratelimit"));
    assert!(
        !refused
            .headers()
            .contains_key("x-ratelimit-remaining-second")
    );
}

#[tokio::test(start_paused = true)]
async fn ratelimit_refusal_body_and_grpc_mapping() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_minute(1))
            .build()
            .unwrap(),
    );
    send(&svc, with_key("a")).await;
    let refused = send(&svc, with_key("a")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["code"], "rate_limited");

    let grpc = || {
        Request::builder()
            .header("x-api-key", "g")
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .body(String::new())
            .unwrap()
    };
    send(&svc, grpc()).await;
    let refused = send(&svc, grpc()).await;
    // Trailers-only: HTTP 200, grpc-status RESOURCE_EXHAUSTED, no body.
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "8");
    assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(refused.headers()[header::RETRY_AFTER], "60");
    assert!(refused.headers().contains_key("ratelimit"));
    assert!(
        refused
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn ratelimit_keys_come_only_from_the_verified_identity() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(Consumer::subject())
            .limit(Limit::new().per_hour(2))
            .build()
            .unwrap(),
    );
    // An unverified token naming alice: no Identity, so no key at all.
    let forged = || {
        Request::builder()
            .header(
                header::AUTHORIZATION,
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
            )
            .body(String::new())
            .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(send(&svc, forged()).await.status(), StatusCode::BAD_REQUEST);
    }
    // alice's own quota is untouched.
    let alice = || with_identity(identity("alice", &[], json!({})));
    let ok = send(&svc, alice()).await;
    assert_eq!(ok.headers()["ratelimit"], r#""hour";r=1;t=1800"#);
    send(&svc, alice()).await;
    assert_eq!(
        send(&svc, alice()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The same subject from another issuer is another consumer.
    let mut other = identity("alice", &[], json!({}));
    other = Identity::from_claims(
        {
            let mut c = other.claims().clone();
            c.insert("iss".into(), json!("https://other.test"));
            c
        },
        &RoleSource::default(),
    );
    assert_eq!(
        send(&svc, with_identity(other)).await.status(),
        StatusCode::OK
    );

    // With a fallback to the peer address, unverified callers count per IP.
    let svc = gateway(
        RateLimitLayer::builder()
            .key(Consumer::subject().or(ClientIp::peer()))
            .limit(Limit::new().per_hour(1))
            .build()
            .unwrap(),
    );
    let mut anonymous = forged();
    anonymous
        .extensions_mut()
        .insert(ClientAddr("192.0.2.1:4000".parse().unwrap()));
    assert_eq!(send(&svc, anonymous).await.status(), StatusCode::OK);
    // alice is not charged for it.
    assert_eq!(send(&svc, alice()).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_per_claim_and_role_tiers() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(Consumer::claim("tenant"))
            .limit(Limit::new().per_minute(2))
            .tier("premium", Limit::new().per_minute(10))
            .build()
            .unwrap(),
    );
    let user =
        |sub: &str, roles: &[&str]| with_identity(identity(sub, roles, json!({ "tenant": 42 })));
    // Two users of tenant 42 share its free quota.
    assert_eq!(send(&svc, user("u1", &[])).await.status(), StatusCode::OK);
    assert_eq!(send(&svc, user("u2", &[])).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, user("u1", &[])).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The premium tier has its own limit and its own state.
    let premium = send(&svc, user("u3", &["premium"])).await;
    assert_eq!(premium.status(), StatusCode::OK);
    assert_eq!(premium.headers()["ratelimit"], r#""minute";r=9;t=6"#);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_client_ip_behind_trusted_proxies() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(ClientIp::peer().trust("10.0.0.0/8".parse().unwrap()))
            .limit(Limit::new().per_hour(1))
            .build()
            .unwrap(),
    );
    let via = |peer: &str, xff: &str| {
        let mut req = Request::builder()
            .header("x-forwarded-for", xff)
            .body(String::new())
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr(peer.parse().unwrap()));
        req
    };
    assert_eq!(
        send(&svc, via("10.0.0.1:1", "1.1.1.1, 203.0.113.9"))
            .await
            .status(),
        StatusCode::OK
    );
    // A forged left part does not mint a new key.
    assert_eq!(
        send(&svc, via("10.0.0.1:1", "2.2.2.2, 203.0.113.9"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // From an untrusted peer the header is ignored: the peer is the client.
    assert_eq!(
        send(&svc, via("198.51.100.7:1", "203.0.113.10"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, via("198.51.100.7:1", "203.0.113.11"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // No peer address: no key.
    assert_eq!(
        send(&svc, Request::new(String::new())).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(start_paused = true)]
async fn ratelimit_hostile_key_material_reaches_no_other_key() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key((
                Route,
                api_key(),
                Header::new(HeaderName::from_static("x-b")),
            ))
            .limit(Limit::new().per_hour(1))
            .build()
            .unwrap(),
    );
    let req = |a: &[u8], b: &str| {
        let mut req = Request::builder()
            .header("x-api-key", http::HeaderValue::from_bytes(a).unwrap())
            .header("x-b", b)
            .body(String::new())
            .unwrap();
        req.extensions_mut().insert(RouteTemplate::new("/orders"));
        req
    };
    assert_eq!(
        send(&svc, req(b"victim", "1")).await.status(),
        StatusCode::OK
    );
    // Values that would spell the victim's key if components were simply
    // concatenated, or that smuggle separators, escapes and braces.
    for (a, b) in [
        (&b"victim;h%3Ax-b=1"[..], "1"),
        (b"victim;h:x-b=1", "1"),
        (b"victim", "1;"),
        (b"victim%3B", "1"),
        (b"victim=", "1"),
        (b"}{victim", "1"),
        (b"victim\xff", "1"),
    ] {
        assert_eq!(
            send(&svc, req(a, b)).await.status(),
            StatusCode::OK,
            "{a:?} {b:?}"
        );
    }
    // Over-long values are hashed, never truncated onto someone's key:
    // one 300-byte value is its own bucket, and the victim is unaffected
    // until its own second request.
    let long = "v".repeat(300);
    assert_eq!(
        send(&svc, req(long.as_bytes(), "1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, req(long.as_bytes(), "1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&svc, req(b"victim", "1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A request without key material is let through unlimited, when that
    // is the policy.
    let lenient = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_hour(1))
            .on_missing_key(MissingKey::Allow)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        assert_eq!(
            send(&lenient, Request::new(String::new())).await.status(),
            StatusCode::OK
        );
    }
}

/// Subjects longer than the verbatim limit keep their own buckets: they are
/// hashed, not replaced by the client-IP fallback (which would put every
/// long-subject user behind one proxy into one bucket).
#[tokio::test(start_paused = true)]
async fn ratelimit_long_subjects_get_distinct_buckets() {
    let svc = gateway(
        RateLimitLayer::builder()
            .key(Consumer::subject().or(ClientIp::peer()))
            .limit(Limit::new().per_hour(1))
            .build()
            .unwrap(),
    );
    let from_proxy = |sub: &str| {
        let mut req = with_identity(identity(sub, &[], json!({})));
        req.extensions_mut()
            .insert(ClientAddr("192.0.2.1:1000".parse().unwrap()));
        req
    };
    // Two subjects of 300 bytes that share their first 299.
    let a = format!("{}a", "s".repeat(299));
    let b = format!("{}b", "s".repeat(299));
    assert_eq!(send(&svc, from_proxy(&a)).await.status(), StatusCode::OK);
    assert_eq!(send(&svc, from_proxy(&b)).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, from_proxy(&a)).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the same long subject shares its bucket"
    );
    assert_eq!(
        send(&svc, from_proxy(&b)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // And the address they came from was never charged.
    let mut anonymous = Request::new(String::new());
    anonymous
        .extensions_mut()
        .insert(ClientAddr("192.0.2.1:1000".parse().unwrap()));
    assert_eq!(send(&svc, anonymous).await.status(), StatusCode::OK);
}

/// The value of the series `series` (name and labels, as exposed), 0 if
/// it does not exist.
#[cfg(feature = "metrics")]
fn sample(metrics: &tower_gateway::metrics::GatewayMetrics, series: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn ratelimit_decisions_are_reported_per_route() {
    use tower_gateway::{metrics::GatewayMetrics, ratelimit::RateLimitMetrics};

    let metrics = GatewayMetrics::default();
    let svc = gateway(
        RateLimitLayer::builder()
            .key(Fixed("all"))
            .limit(Limit::new().per_minute(2))
            .metrics(RateLimitMetrics::new(&metrics))
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        let mut req = Request::new(String::new());
        req.extensions_mut()
            .insert(RouteTemplate::new("/orders/{id}"));
        send(&svc, req).await;
    }
    send(&svc, Request::new(String::new())).await;
    let decisions = |route: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(r#"gateway_ratelimit_decisions_total{{route="{route}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(decisions("/orders/{id}", "allowed"), 2);
    assert_eq!(decisions("/orders/{id}", "limited"), 1);
    assert_eq!(decisions("unmatched", "limited"), 1);
    assert_eq!(decisions("unmatched", "allowed"), 0);
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn ratelimit_requests_without_a_key_are_reported() {
    use tower_gateway::{metrics::GatewayMetrics, ratelimit::RateLimitMetrics};

    let metrics = GatewayMetrics::default();
    let svc = gateway(
        RateLimitLayer::builder()
            .key(api_key())
            .limit(Limit::new().per_minute(2))
            .metrics(RateLimitMetrics::new(&metrics))
            .build()
            .unwrap(),
    );
    let response = send(&svc, Request::new(String::new())).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        sample(
            &metrics,
            r#"gateway_ratelimit_decisions_total{route="unmatched",outcome="missing_key"}"#
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn ratelimit_readiness_is_the_inner_services() {
    let layer = RateLimitLayer::builder()
        .key(api_key())
        .limit(Limit::new().per_hour(1))
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<String>, Response<String>, _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let response = svc.call(with_key("a"));
    let (request, send_response) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()["x-api-key"], "a");
    send_response.send_response(Response::new(String::from("upstream")));
    let response = response.await.unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""hour";r=0;t=3600"#);

    // A refused request never reaches the inner service.
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let refused = svc.call(with_key("a")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(matches!(
        futures_poll_once(handle.next_request()).await,
        Poll::Pending
    ));
}

/// Polls a future once.
async fn futures_poll_once<F: std::future::Future>(f: F) -> Poll<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

#[tokio::test(start_paused = true)]
async fn ratelimit_local_memory_bounds_itself_with_a_million_keys() {
    // A cap far above the key count: only idle eviction can bound memory.
    let limiter = LocalLimiter::with_max_keys(100_000_000);
    let limit = Limit::new().per_second(10);
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        limiter.check(&i.to_string(), &limit);
        if i % 1000 == 999 {
            // A thousand new clients per millisecond; each idles after 100 ms.
            tokio::time::advance(Duration::from_millis(1)).await;
            if i % 10_000 == 9_999 {
                peak = peak.max(limiter.len());
            }
        }
    }
    // About 100,000 keys are live at any time; idle ones are swept out
    // (a shard is swept when it doubles: at most about twice the live keys).
    assert!(peak <= 250_000, "peak {peak}");
    // Ten idle seconds later, traffic on any shard sweeps it.
    tokio::time::advance(Duration::from_secs(11)).await;
    for i in 0..10_000u32 {
        limiter.check(&format!("late-{i}"), &limit);
    }
    assert!(limiter.len() < 20_000, "{}", limiter.len());

    // Keys that never idle: the cap holds.
    let capped = LocalLimiter::with_max_keys(10_000);
    let hourly = Limit::new().per_hour(100);
    for i in 0..200_000u32 {
        capped.check(&i.to_string(), &hourly);
        if i % 1000 == 999 {
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    }
    assert!(capped.len() <= 10_000, "{}", capped.len());
    // A key that was just used keeps its state: the keys closest to full
    // go first.
    let recent = capped.check("199999", &hourly);
    assert_eq!(recent.windows()[0].remaining, 98);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_stacks_under_axum_per_route() {
    use axum::{Router, body::Body, routing::get};

    let orders = RateLimitLayer::builder()
        .key((Route, Fixed("all")))
        .limit(Limit::new().per_minute(1))
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/orders", get(|| async { "orders" }).route_layer(orders))
        .route("/health", get(|| async { "up" }));
    let get = |path: &str| {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(RouteTemplate::new(path));
        req
    };
    let ok = app.clone().oneshot(get("/orders")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit"], r#""minute";r=0;t=60"#);
    let body = ok.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"orders");
    let refused = app.clone().oneshot(get("/orders")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Other routes are not limited.
    for _ in 0..3 {
        let up = app.clone().oneshot(get("/health")).await.unwrap();
        assert_eq!(up.status(), StatusCode::OK);
    }
}
