//! Consul discovery and registration against a double of Consul's HTTP API
//! (tests/consul_double), plus one ignored test against a real agent.
//!
//! Timed behaviour (backoff, rate limit, TTLs, long windows) runs on
//! Tokio's paused clock; the double runs on the same runtime, so its
//! blocking-query waits and TTL timers use that clock too.
#![cfg(feature = "consul")]

mod consul_double;

use std::{sync::Arc, time::Duration};

use consul_double::{Acl, AclToken, ConsulDouble, DoubleConfig, Fault};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use tower::discover::Change;
use tower_gateway::discovery::{
    ConsulDiscoveryService, Endpoint, EndpointWatch, Snapshot,
    consul::{ConsulClient, ConsulClientBuilder, ServiceCheck, ServiceRegistration},
};

const LONG: Duration = Duration::from_secs(5);

/// What the watcher reported, read back from its metrics (service
/// `orders`).
#[cfg(feature = "metrics")]
struct Recorder(tower_gateway::metrics::GatewayMetrics);

#[cfg(feature = "metrics")]
impl Recorder {
    fn new() -> Self {
        Self(tower_gateway::metrics::GatewayMetrics::default())
    }

    fn metrics(&self) -> tower_gateway::discovery::DiscoveryMetrics {
        tower_gateway::discovery::DiscoveryMetrics::new(&self.0)
    }

    fn value(&self, name: &str) -> Option<f64> {
        let series = format!(r#"{name}{{service="orders"}} "#);
        self.0
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
    }

    fn last_staleness(&self) -> Option<Duration> {
        self.value("gateway_discovery_staleness_seconds")
            .map(Duration::from_secs_f64)
    }

    fn last_count(&self) -> Option<usize> {
        self.value("gateway_discovered_endpoints")
            .map(|n| n as usize)
    }

    /// Whether `condition` holds within `timeout`. Metrics have no change
    /// signal: they are read every 10 ms.
    async fn wait(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let wait = async {
            while !condition(self) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

fn client(double: &ConsulDouble) -> ConsulClient {
    ConsulClient::new(double.url()).unwrap()
}

/// Waits (by signal, not by polling) until the watch's snapshot satisfies
/// `condition`.
async fn until(
    watch: &EndpointWatch,
    timeout: Duration,
    condition: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let mut rx = watch.subscribe();
    let snapshot = tokio::time::timeout(timeout, rx.wait_for(|s| condition(s)))
        .await
        .expect("condition not reached in time")
        .expect("watcher ended");
    Arc::clone(&snapshot)
}

async fn next(stream: &mut ConsulDiscoveryService) -> Change<String, Endpoint> {
    tokio::time::timeout(LONG, stream.next())
        .await
        .expect("a change in time")
        .expect("stream open")
        .unwrap()
}

fn ids(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.endpoints.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn discovery_sees_registration_and_deregistration_within_one_round() {
    let double = ConsulDouble::start().await;
    double.register(json!({
        "ID": "orders-1", "Name": "orders", "Address": "localhost", "Port": 3001,
        "Tags": ["v1"], "Meta": {"version": "1.0"}
    }));
    // Another service on the same node is not ours.
    double.register(json!({"ID": "billing-1", "Name": "billing", "Port": 4000}));

    let wait = Duration::from_secs(10);
    let orders = client(&double).watch("orders").wait(wait).spawn().unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    let watch = orders.watch();
    let first = watch.current();
    assert_eq!(ids(&first), ["orders-1"]);
    let e = &first.endpoints["orders-1"];
    assert_eq!(e.authority(), "localhost:3001");
    assert_eq!(e.tags(), ["v1".to_owned()]);
    assert_eq!(e.meta()["version"], "1.0");
    assert!(!first.stale);

    // The watcher now holds a blocking query; a registration answers it.
    assert!(double.wait_parked("orders", LONG).await);
    let request = double.last_health_request("orders").unwrap();
    assert_eq!(request.param("passing"), Some("true"));
    assert_eq!(request.param("wait"), Some("10000ms"));
    assert!(request.param("index").is_some());
    let registered = Instant::now();
    double.register(json!({"ID": "orders-2", "Name": "orders", "Port": 3002}));
    let seen = until(&watch, LONG, |s| s.endpoints.contains_key("orders-2")).await;
    let latency = registered.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "registration seen after {latency:?}"
    );
    // No service address: the node's address, as Consul documents.
    assert_eq!(seen.endpoints["orders-2"].authority(), "127.0.0.1:3002");

    assert!(double.wait_parked("orders", LONG).await);
    let deregistered = Instant::now();
    double.deregister("orders-1");
    let seen = until(&watch, LONG, |s| !s.endpoints.contains_key("orders-1")).await;
    let latency = deregistered.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "deregistration seen after {latency:?}"
    );
    assert_eq!(ids(&seen), ["orders-2"]);
}

#[tokio::test]
async fn failing_checks_and_empty_answers_are_applied() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "orders-2", "Name": "orders", "Port": 3002}));
    let orders = client(&double)
        .watch("orders")
        .min_query_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    let watch = orders.watch();
    until(&watch, LONG, |s| s.endpoints.len() == 1).await;

    // An instance whose check fails leaves the passing set.
    double.register(json!({
        "ID": "orders-3", "Name": "orders", "Port": 3003,
        "Check": {"TTL": "1h", "Status": "passing"}
    }));
    until(&watch, LONG, |s| s.endpoints.contains_key("orders-3")).await;
    double.set_check("service:orders-3", "critical");
    until(&watch, LONG, |s| !s.endpoints.contains_key("orders-3")).await;

    // An empty answer is real: every instance gone.
    double.deregister("orders-2");
    let empty = until(&watch, LONG, |s| s.endpoints.is_empty()).await;
    assert!(!empty.stale);
}

#[tokio::test]
async fn discover_stream_yields_inserts_and_removes() {
    fn assert_discover<D: tower::discover::Discover<Key = String, Service = Endpoint>>(_: &D) {}

    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "a", "Name": "orders", "Port": 3001}));
    let mut orders = client(&double)
        .watch("orders")
        .min_query_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    assert_discover(&orders);

    assert!(
        matches!(next(&mut orders).await, Change::Insert(id, e) if id == "a" && e.port() == 3001)
    );
    double.register(json!({"ID": "b", "Name": "orders", "Port": 3002}));
    assert!(matches!(next(&mut orders).await, Change::Insert(id, _) if id == "b"));
    double.deregister("a");
    assert!(matches!(next(&mut orders).await, Change::Remove(id) if id == "a"));

    // A clone is a second stream over the same watcher: it starts with the
    // current set.
    let mut other = orders.clone();
    assert!(matches!(next(&mut other).await, Change::Insert(id, _) if id == "b"));
    // An instance whose port changes is removed and inserted again.
    double.register(json!({"ID": "b", "Name": "orders", "Port": 3003}));
    assert!(matches!(next(&mut orders).await, Change::Remove(id) if id == "b"));
    assert!(
        matches!(next(&mut orders).await, Change::Insert(id, e) if id == "b" && e.port() == 3003)
    );
}

#[tokio::test]
async fn index_going_backwards_resets_the_loop_and_updates_keep_flowing() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "a1", "Name": "orders", "Port": 3001}));
    let before = double.snapshot();
    for (id, port) in [("a2", 3002), ("a3", 3003), ("a4", 3004)] {
        double.register(json!({"ID": id, "Name": "orders", "Port": port}));
    }
    let high = double.service_index("orders");

    let orders = client(&double)
        .watch("orders")
        .wait(Duration::from_secs(10))
        .min_query_interval(Duration::from_millis(20))
        .spawn()
        .unwrap();
    let watch = orders.watch();
    until(&watch, LONG, |s| s.endpoints.len() == 4).await;
    assert!(double.wait_parked("orders", LONG).await);
    assert_eq!(
        double.last_health_request("orders").unwrap().param("index"),
        Some(high.to_string().as_str())
    );

    // A rebuilt cluster restored from an older snapshot: indexes go back.
    double.restore(&before);
    let restored = until(&watch, LONG, |s| ids(s) == ["a1"]).await;
    assert!(!restored.stale);
    assert!(double.service_index("orders") < high);

    // The loop restarted (index 0, sent as 1) instead of waiting for the
    // old index to come back.
    assert!(double.wait_parked("orders", LONG).await);
    assert!(
        double
            .requests()
            .iter()
            .any(|r| r.path == "/v1/health/service/orders" && r.param("index") == Some("1"))
    );
    let parked_at = double.last_health_request("orders").unwrap();
    assert_eq!(
        parked_at.param("index"),
        Some(double.service_index("orders").to_string().as_str())
    );

    // A registration at an index still below the old one is seen at once.
    let registered = Instant::now();
    double.register(json!({"ID": "b1", "Name": "orders", "Port": 3005}));
    assert!(double.service_index("orders") < high);
    until(&watch, LONG, |s| s.endpoints.contains_key("b1")).await;
    assert!(registered.elapsed() < Duration::from_secs(1));
}

#[cfg(feature = "metrics")] // Reads what the watcher reported.
#[tokio::test]
async fn garbage_and_errors_keep_the_last_set_stale_and_recovery_flows() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    double.register(json!({"ID": "o2", "Name": "orders", "Port": 3002}));
    let recorder = Recorder::new();
    let orders = client(&double)
        .watch("orders")
        .wait(Duration::from_secs(10))
        .min_query_interval(Duration::from_millis(20))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .metrics(recorder.metrics())
        .spawn()
        .unwrap();
    let watch = orders.watch();
    let good = until(&watch, LONG, |s| s.endpoints.len() == 2 && !s.stale).await;
    assert_eq!(recorder.last_count(), Some(2));
    assert_eq!(recorder.last_staleness(), Some(Duration::ZERO));

    for fault in [Fault::Garbage, Fault::NoLeader] {
        assert!(double.wait_parked("orders", LONG).await);
        let fault_at = Instant::now();
        double.set_fault(fault);
        // A change wakes the blocked query; its answer is garbage / 500.
        double.register(json!({"ID": "o3", "Name": "orders", "Port": 3003}));
        let stale = until(&watch, LONG, |s| s.stale).await;
        assert_eq!(ids(&stale), ids(&good), "{fault:?}: last known set kept");
        // Still the time of the last good answer.
        assert!(stale.confirmed_at >= good.confirmed_at && stale.confirmed_at <= fault_at);
        // The age keeps being reported while Consul misbehaves.
        assert!(
            recorder
                .wait(LONG, |r| r.last_staleness()
                    >= Some(Duration::from_millis(150)))
                .await,
            "{fault:?}: staleness reported"
        );
        assert!(orders.watch().current().stale);

        double.set_fault(Fault::None);
        let fresh = until(&watch, LONG, |s| !s.stale).await;
        assert_eq!(ids(&fresh), ["o1", "o2", "o3"], "{fault:?}: recovered");
        assert!(fresh.confirmed_at > stale.confirmed_at);
        assert!(
            recorder
                .wait(LONG, |r| r.last_staleness() == Some(Duration::ZERO)
                    && r.last_count() == Some(3))
                .await
        );
        double.deregister("o3");
        until(&watch, LONG, |s| s.endpoints.len() == 2).await;
    }
}

#[cfg(feature = "metrics")] // Reads what the watcher reported.
#[tokio::test]
async fn consul_down_keeps_the_last_set_and_recovers_on_the_same_port() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let recorder = Recorder::new();
    let orders = client(&double)
        .watch("orders")
        .wait(Duration::from_secs(10))
        .min_query_interval(Duration::from_millis(20))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .metrics(recorder.metrics())
        .spawn()
        .unwrap();
    let watch = orders.watch();
    until(&watch, LONG, |s| !s.stale && s.endpoints.len() == 1).await;
    assert!(double.wait_parked("orders", LONG).await);

    double.stop().await;
    let stale = until(&watch, LONG, |s| s.stale).await;
    assert_eq!(ids(&stale), ["o1"]);
    assert!(
        recorder
            .wait(LONG, |r| r.last_staleness()
                >= Some(Duration::from_millis(100)))
            .await
    );

    // The catalog moved on while this agent was unreachable.
    double.register(json!({"ID": "o2", "Name": "orders", "Port": 3002}));
    let requests_before = double.requests().len();
    double.resume().await;
    let fresh = until(&watch, LONG, |s| !s.stale).await;
    assert_eq!(ids(&fresh), ["o1", "o2"]);
    // After a failure the first query is a plain read, not a blocking one
    // at an index the restarted agent may never reach.
    let after: Vec<_> = double
        .requests()
        .into_iter()
        .skip(requests_before)
        .collect();
    assert_eq!(after[0].param("index"), None);
    assert_eq!(recorder.last_staleness(), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn no_busy_loop_while_the_index_does_not_change() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let orders = client(&double).watch("orders").spawn().unwrap(); // wait 60 s
    assert!(orders.wait_for_sync(LONG).await);
    tokio::time::sleep(Duration::from_secs(600)).await;
    // One plain read, then one blocking query per wait (60 s plus up to
    // 60/16 s of jitter): about ten in ten minutes.
    let requests = double.health_requests("orders");
    assert!(
        (10..=12).contains(&requests),
        "{requests} requests in 10 min"
    );
    assert!(!orders.watch().current().stale);
}

#[tokio::test(start_paused = true)]
async fn no_busy_loop_when_the_index_churns() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    double.register(json!({
        "ID": "flappy", "Name": "orders", "Port": 3002,
        "Check": {"TTL": "1h", "Status": "passing"}
    }));
    let orders = client(&double).watch("orders").spawn().unwrap(); // 2 s interval
    let watch = orders.watch();
    assert!(orders.wait_for_sync(LONG).await);
    let start = double.health_requests("orders");
    // Every write answers the blocked query at once.
    for i in 0..600 {
        double.set_check(
            "service:flappy",
            if i % 2 == 0 { "critical" } else { "passing" },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = double.health_requests("orders") - start;
    // 60 s at one query per 2 s after a burst of two; without the limit
    // this would be ~600.
    assert!(
        (20..=33).contains(&requests),
        "{requests} requests in 60 s of churn"
    );
    // It still follows the service.
    double.set_check("service:flappy", "passing");
    until(&watch, Duration::from_secs(10), |s| s.endpoints.len() == 2).await;
}

#[cfg(feature = "metrics")] // Reads what the watcher reported.
#[tokio::test(start_paused = true)]
async fn no_busy_loop_when_consul_answers_garbage() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    double.set_fault(Fault::Garbage);
    let recorder = Recorder::new();
    let orders = client(&double)
        .watch("orders")
        .metrics(recorder.metrics())
        .spawn()
        .unwrap(); // backoff 1 s doubling to 30 s, with jitter
    tokio::time::sleep(Duration::from_secs(600)).await;
    let requests = double.health_requests("orders");
    // Delays of 0.5–1, 1–2, 2–4, 4–8, 8–16, then 15–30 s: 25 to 45 tries.
    assert!(
        (20..=46).contains(&requests),
        "{requests} requests in 10 min"
    );
    let snapshot = orders.watch().current();
    assert!(snapshot.stale && snapshot.endpoints.is_empty());
    assert!(recorder.last_staleness().unwrap() >= Duration::from_secs(560));
    assert!(!orders.wait_for_sync(Duration::from_millis(1)).await);
}

#[tokio::test(start_paused = true)]
async fn no_busy_loop_while_consul_is_down() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let orders = client(&double).watch("orders").spawn().unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    double.stop().await;
    let before = double.health_requests("orders");
    tokio::time::sleep(Duration::from_secs(600)).await;
    // Nothing reaches a stopped double; count the attempts by resuming and
    // checking the loop is still backing off (the next try comes within
    // the 30 s cap, not at once).
    assert_eq!(double.health_requests("orders"), before);
    let snapshot = orders.watch().current();
    assert!(snapshot.stale);
    assert_eq!(ids(&snapshot), ["o1"]);
    double.resume().await;
    let resumed = Instant::now();
    assert!(orders.wait_for_sync(Duration::from_secs(31)).await);
    assert!(resumed.elapsed() <= Duration::from_secs(30));
    assert!(double.health_requests("orders") > before);
}

#[tokio::test]
async fn acl_token_is_sent_and_enforced() {
    let acl = Acl {
        tokens: vec![
            AclToken::new("gateway-secret")
                .service_read("")
                .node_read(""),
            AclToken::new("no-node-read").service_read(""),
            AclToken::new("registrar-secret").service_write("orders"),
        ],
        ..Acl::default()
    };
    let double = ConsulDouble::start_with(DoubleConfig { acl: Some(acl) }).await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let with_token = |token: &str| {
        ConsulClient::builder(double.url())
            .token(token)
            .build()
            .unwrap()
    };

    let orders = with_token("gateway-secret")
        .watch("orders")
        .spawn()
        .unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    assert_eq!(ids(&orders.watch().current()), ["o1"]);
    let request = double.last_health_request("orders").unwrap();
    assert_eq!(request.token.as_deref(), Some("gateway-secret"));

    // Unknown token: 403 "ACL not found"; nothing is ever confirmed.
    let denied = with_token("wrong").watch("orders").spawn().unwrap();
    assert!(!denied.wait_for_sync(Duration::from_millis(500)).await);
    let snapshot = denied.watch().current();
    assert!(snapshot.stale && snapshot.endpoints.is_empty());
    assert!(
        double
            .requests()
            .iter()
            .any(|r| r.token.as_deref() == Some("wrong"))
    );

    // A token that may not read the node sees an ACL-filtered, empty
    // answer: a successful answer, as Consul gives it.
    let filtered = with_token("no-node-read").watch("orders").spawn().unwrap();
    assert!(filtered.wait_for_sync(LONG).await);
    assert!(filtered.watch().current().endpoints.is_empty());

    // No token at all is the anonymous token: everything is filtered.
    let anonymous = client(&double).watch("orders").spawn().unwrap();
    assert!(anonymous.wait_for_sync(LONG).await);
    assert!(anonymous.watch().current().endpoints.is_empty());
    assert!(double.last_health_request("orders").is_some());

    // Registration needs service:write.
    let refused = with_token("gateway-secret")
        .register(ServiceRegistration::new("orders", "o2").port(3002))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(http::StatusCode::FORBIDDEN));
    assert!(
        refused.to_string().contains("Permission denied"),
        "{refused}"
    );
    let registration = with_token("registrar-secret")
        .register(ServiceRegistration::new("orders", "o2").port(3002))
        .await
        .unwrap();
    until(&orders.watch(), LONG, |s| s.endpoints.len() == 2).await;
    registration.deregister().await.unwrap();
    until(&orders.watch(), LONG, |s| s.endpoints.len() == 1).await;
}

#[tokio::test]
async fn tag_and_datacenter_parameters() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001, "Tags": ["v2", "EU"]}));
    double.register(json!({"ID": "o2", "Name": "orders", "Port": 3002, "Tags": ["v2"]}));
    double.register(json!({"ID": "o3", "Name": "orders", "Port": 3003, "Tags": ["v1", "eu"]}));

    // Repeated `tag`: every tag must match (Consul compares without case).
    let tagged = client(&double)
        .watch("orders")
        .tags(["v2", "eu"])
        .spawn()
        .unwrap();
    assert!(tagged.wait_for_sync(LONG).await);
    assert_eq!(ids(&tagged.watch().current()), ["o1"]);
    let request = double.last_health_request("orders").unwrap();
    assert_eq!(request.params("tag"), ["v2", "eu"]);
    assert_eq!(request.param("dc"), None);

    let dc1 = ConsulClient::builder(double.url())
        .datacenter("dc1")
        .build()
        .unwrap()
        .watch("orders")
        .spawn()
        .unwrap();
    assert!(dc1.wait_for_sync(LONG).await);
    assert_eq!(dc1.watch().current().endpoints.len(), 3);
    assert_eq!(
        double.last_health_request("orders").unwrap().param("dc"),
        Some("dc1")
    );

    // An unknown datacenter: 500 "No path to datacenter", never confirmed.
    let elsewhere = client(&double)
        .watch("orders")
        .datacenter("dc9")
        .spawn()
        .unwrap();
    assert!(!elsewhere.wait_for_sync(Duration::from_millis(500)).await);
    assert!(elsewhere.watch().current().endpoints.is_empty());
    assert!(
        double
            .requests()
            .iter()
            .any(|r| r.param("dc") == Some("dc9"))
    );
}

#[tokio::test]
async fn namespace_and_partition_are_sent() {
    let double = ConsulDouble::start().await;
    let consul = ConsulClient::builder(double.url())
        .namespace("team-a")
        .partition("edge")
        .build()
        .unwrap();
    let watch = consul.watch("orders").spawn().unwrap();
    // The double is Community Edition, which refuses both with 400.
    assert!(!watch.wait_for_sync(Duration::from_millis(300)).await);
    let request = double.last_health_request("orders").unwrap();
    assert_eq!(request.param("ns"), Some("team-a"));
    assert_eq!(request.param("partition"), Some("edge"));

    let refused = consul
        .register(ServiceRegistration::new("orders", "o1"))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(http::StatusCode::BAD_REQUEST));
    let register = double
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/agent/service/register")
        .unwrap();
    assert_eq!(register.param("ns"), Some("team-a"));
}

#[tokio::test]
async fn registration_sends_consuls_register_body() {
    let double = ConsulDouble::start().await;
    // The seed's `curl -X PUT …/v1/agent/service/register`, as a Rust API.
    let registration = client(&double)
        .register(
            ServiceRegistration::new("order-service", "order-service-1")
                .address("order-service")
                .port(3000)
                .tags(["microservice", "orders"])
                .check(
                    ServiceCheck::http(
                        "https://order-service:3000/health",
                        Duration::from_secs(10),
                    )
                    .timeout(Duration::from_secs(2))
                    .tls_skip_verify(false),
                ),
        )
        .await
        .unwrap();
    let request = double
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/agent/service/register")
        .unwrap();
    assert_eq!(request.method, http::Method::PUT);
    assert_eq!(
        request.json(),
        json!({
            "ID": "order-service-1",
            "Name": "order-service",
            "Address": "order-service",
            "Port": 3000,
            "Tags": ["microservice", "orders"],
            "Check": {
                "CheckID": "service:order-service-1",
                "HTTP": "https://order-service:3000/health",
                "Interval": "10s",
                "Timeout": "2s",
                "TLSSkipVerify": false
            }
        })
    );
    assert!(double.has_instance("order-service-1"));
    // HTTP checks start critical (the double never probes them).
    assert_eq!(
        double.check_status("service:order-service-1").as_deref(),
        Some("critical")
    );
    registration.deregister().await.unwrap();
    assert!(!double.has_instance("order-service-1"));
    let deregister = double.requests().into_iter().last().unwrap();
    assert_eq!(deregister.method, http::Method::PUT);
    assert_eq!(
        deregister.path,
        "/v1/agent/service/deregister/order-service-1"
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_keepalive_keeps_the_check_passing_and_deregistration_removes_it() {
    let double = ConsulDouble::start().await;
    let consul = client(&double);
    let registration = consul
        .register(
            ServiceRegistration::new("gateway", "gateway-1")
                .address("127.0.0.1")
                .port(8080)
                .check(
                    ServiceCheck::ttl(Duration::from_secs(15))
                        .deregister_critical_service_after(Duration::from_secs(600)),
                ),
        )
        .await
        .unwrap();
    assert_eq!(registration.check_id(), Some("service:gateway-1"));
    // Passed right away: routable as soon as register() returns.
    assert_eq!(
        double.check_status("service:gateway-1").as_deref(),
        Some("passing")
    );
    let gateways = consul.watch("gateway").spawn().unwrap();
    let watch = gateways.watch();
    until(&watch, LONG, |s| s.endpoints.contains_key("gateway-1")).await;

    // An instance whose TTL is never renewed turns critical and leaves.
    double.register(json!({
        "ID": "gateway-2", "Name": "gateway", "Port": 8081,
        "Check": {"TTL": "10s", "Status": "passing"}
    }));
    until(&watch, LONG, |s| s.endpoints.len() == 2).await;

    // Eight TTLs later the kept-alive instance is still passing.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        double.check_status("service:gateway-1").as_deref(),
        Some("passing")
    );
    assert_eq!(
        double.check_status("service:gateway-2").as_deref(),
        Some("critical")
    );
    let passes = double
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/agent/check/pass/service:gateway-1")
        .count();
    assert!(
        (24..=26).contains(&passes),
        "{passes} passes in 120 s at TTL/3"
    );
    let current = watch.current();
    assert_eq!(ids(&current), ["gateway-1"]);

    // Graceful shutdown: deregistered, and discovery sees it go.
    registration.deregister().await.unwrap();
    assert!(!double.has_instance("gateway-1"));
    until(&watch, LONG, |s| s.endpoints.is_empty()).await;
    // The keep-alive stopped with it.
    let passes_then = double.requests().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let later: Vec<_> = double.requests().into_iter().skip(passes_then).collect();
    assert!(later.iter().all(|r| !r.path.starts_with("/v1/agent/")));
}

#[tokio::test(start_paused = true)]
async fn keepalive_registers_again_when_the_agent_forgot_the_instance() {
    let double = ConsulDouble::start().await;
    let _registration = client(&double)
        .register(
            ServiceRegistration::new("gateway", "gateway-1")
                .port(8080)
                .check(ServiceCheck::ttl(Duration::from_secs(9))),
        )
        .await
        .unwrap();
    // The agent lost it (restarted without its data directory).
    double.deregister("gateway-1");
    assert!(
        double
            .wait_until(Duration::from_secs(10), |d| d.has_instance("gateway-1"))
            .await
    );
    assert!(
        double
            .wait_until(Duration::from_secs(10), |d| {
                d.check_status("service:gateway-1").as_deref() == Some("passing")
            })
            .await
    );
}

#[tokio::test]
async fn dropping_a_registration_deregisters_it() {
    let double = ConsulDouble::start().await;
    let registration = client(&double)
        .register(ServiceRegistration::new("gateway", "gateway-1").port(8080))
        .await
        .unwrap();
    assert!(double.has_instance("gateway-1"));
    drop(registration);
    assert!(
        double
            .wait_until(LONG, |d| !d.has_instance("gateway-1"))
            .await
    );
}

#[tokio::test(start_paused = true)]
async fn explicit_stop_ends_the_watcher_and_its_streams() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let orders = client(&double).watch("orders").spawn().unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    let watch = orders.watch();
    let mut changes = watch.changes();
    assert!(matches!(changes.next().await, Some(Ok(Change::Insert(..)))));
    assert!(double.wait_parked("orders", LONG).await);

    orders.stop();
    // The stream ends; the last set stays readable, marked stale.
    let end = tokio::time::timeout(LONG, changes.next()).await.unwrap();
    assert!(end.is_none());
    let last = watch.current();
    assert!(last.stale);
    assert_eq!(ids(&last), ["o1"]);
    let requests = double.health_requests("orders");
    double.register(json!({"ID": "o2", "Name": "orders", "Port": 3002}));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(double.health_requests("orders"), requests);
}

#[tokio::test(start_paused = true)]
async fn watcher_stops_when_the_last_holder_is_dropped() {
    let double = ConsulDouble::start().await;
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));
    let orders = client(&double).watch("orders").spawn().unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    let watch = orders.watch();
    drop(orders);

    // An EndpointWatch still holds it: it keeps following Consul.
    double.register(json!({"ID": "o2", "Name": "orders", "Port": 3002}));
    until(&watch, LONG, |s| s.endpoints.len() == 2).await;

    // Let the last query reach the double before counting.
    assert!(double.wait_parked("orders", LONG).await);
    drop(watch);
    let requests = double.health_requests("orders");
    double.register(json!({"ID": "o3", "Name": "orders", "Port": 3003}));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        double.health_requests("orders"),
        requests,
        "no query after the last holder left"
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn https_to_consul_trusts_a_custom_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use tower_gateway::client::HttpClientConfig;

    // A private CA and a leaf for 127.0.0.1, as `consul tls ca create` /
    // `consul tls cert create -server` would make.
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf_params = CertificateParams::default();
    leaf_params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_pem = leaf_params.signed_by(&leaf_key, &issuer).unwrap().pem();

    let double = ConsulDouble::start_tls(&leaf_pem, &leaf_key.serialize_pem()).await;
    assert!(double.url().starts_with("https://127.0.0.1:"));
    double.register(json!({"ID": "o1", "Name": "orders", "Port": 3001}));

    // Without the CA the certificate is refused: nothing is confirmed.
    let untrusted = ConsulClient::builder(double.url())
        .http(HttpClientConfig::default().native_roots(false))
        .build()
        .unwrap();
    let blind = untrusted.watch("orders").spawn().unwrap();
    assert!(!blind.wait_for_sync(Duration::from_millis(300)).await);
    assert_eq!(double.health_requests("orders"), 0);

    let trusted = ConsulClient::builder(double.url())
        .http(
            HttpClientConfig::default()
                .native_roots(false)
                .add_root_pem(ca_pem.as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap();
    let orders = trusted.watch("orders").spawn().unwrap();
    assert!(orders.wait_for_sync(LONG).await);
    assert_eq!(ids(&orders.watch().current()), ["o1"]);
    let registration = trusted
        .register(ServiceRegistration::new("orders", "o2").port(3002))
        .await
        .unwrap();
    until(&orders.watch(), LONG, |s| s.endpoints.len() == 2).await;
    registration.deregister().await.unwrap();
    assert!(!double.has_instance("o2"));
}

/// Against a real agent:
///
/// ```sh
/// consul agent -dev
/// CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo test --all-features --test consul_discovery -- --ignored
/// ```
#[tokio::test]
#[ignore = "needs a Consul agent at CONSUL_HTTP_ADDR (consul agent -dev)"]
async fn real_agent_registers_watches_and_deregisters() {
    let consul = ConsulClientBuilder::from_env().build().unwrap();
    let name = format!("tower-gateway-test-{}", std::process::id());
    let register = |n: u16| {
        ServiceRegistration::new(name.clone(), format!("{name}-{n}"))
            .address("127.0.0.1")
            .port(18080 + n)
            .tags(["tower-gateway-test"])
            .meta("instance", n.to_string())
            .check(ServiceCheck::ttl(Duration::from_secs(10)))
    };
    let first = consul.register(register(1)).await.unwrap();
    let second = consul.register(register(2)).await.unwrap();

    let service = consul
        .watch(name.clone())
        .tag("tower-gateway-test")
        .wait(Duration::from_secs(5))
        .spawn()
        .unwrap();
    let watch = service.watch();
    // The agent syncs to the catalog within moments (anti-entropy).
    let both = until(&watch, Duration::from_secs(20), |s| s.endpoints.len() == 2).await;
    let one = &both.endpoints[&format!("{name}-1")];
    assert_eq!(one.authority(), "127.0.0.1:18081");
    assert_eq!(one.meta()["instance"], "1");

    first.deregister().await.unwrap();
    let left = until(&watch, Duration::from_secs(20), |s| s.endpoints.len() == 1).await;
    assert!(left.endpoints.contains_key(&format!("{name}-2")));
    second.deregister().await.unwrap();
    let none = until(&watch, Duration::from_secs(20), |s| s.endpoints.is_empty()).await;
    assert!(!none.stale);
    service.stop();
}

/// A watch made before any runtime exists starts its query loop the first
/// time it is read inside one.
#[test]
fn watch_made_outside_a_runtime_starts_when_first_read_inside_one() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let double = runtime.block_on(ConsulDouble::start());
    double.register(json!({"ID": "orders-1", "Name": "orders", "Port": 3001}));
    assert!(tokio::runtime::Handle::try_current().is_err());
    let orders = client(&double).watch("orders").spawn().unwrap();
    let watch = orders.watch();
    assert!(watch.current().stale, "answered before any runtime ran");
    runtime.block_on(async {
        assert!(orders.wait_for_sync(LONG).await, "the watch never started");
        assert_eq!(ids(&watch.current()), ["orders-1"]);
        assert!(double.last_health_request("orders").is_some());
    });
}
