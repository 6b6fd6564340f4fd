//! `RateLimitLayer` against a real three-master Redis Cluster (nodes started
//! with `--cluster-enabled yes`, joined with `redis-cli --cluster create`):
//! the same exactness as against one Redis, with keys spread over every
//! node and each decision's keys in one slot.
#![cfg(feature = "redis")]
mod support_redis;

use std::{collections::HashSet, convert::Infallible, time::Duration};

use http::{HeaderName, Request, Response, StatusCode};
use support_redis::{RedisCluster, redis_available};
use tower::{Layer, ServiceExt, service_fn};
use tower_gateway::ratelimit::{
    FailurePolicy, Header, Limit, RateLimitLayer, RedisBackend, RedisConfig,
};

fn request(key: &str) -> Request<String> {
    Request::builder()
        .uri("/orders")
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_exact_across_two_gateways_on_a_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start(3);
    let limit = Limit::new().per_minute(100).per_hour(50);
    let mut gateways = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..2 {
        let redis = RedisBackend::cluster(
            cluster.urls(),
            RedisConfig::default().timeout(Duration::from_millis(500)),
        )
        .await
        .expect("connect to the cluster");
        backends.push(redis.clone());
        let layer = RateLimitLayer::builder()
            .key(Header::new(HeaderName::from_static("x-api-key")))
            .limit(limit.clone())
            .redis(redis)
            // A cluster failure must show as a failed test, not a pass.
            .on_backend_error(FailurePolicy::Deny)
            .build()
            .unwrap();
        gateways.push(layer.layer(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        })));
    }

    // 200 concurrent requests for each of 6 keys, through both gateways.
    let keys: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    let mut tasks = Vec::new();
    for key in &keys {
        for i in 0..200 {
            let svc = gateways[i % 2].clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let status = svc.oneshot(request(&key)).await.unwrap().status();
                (key, status)
            }));
        }
    }
    let mut admitted = std::collections::HashMap::<String, usize>::new();
    for task in tasks {
        let (key, status) = task.await.unwrap();
        match status {
            StatusCode::OK => *admitted.entry(key).or_default() += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    for key in &keys {
        assert_eq!(admitted.get(key), Some(&50), "{key}");
    }
    for redis in &backends {
        assert_eq!(redis.stats().errors, 0);
    }

    // Each decision's keys share a slot; the keys spread over the nodes.
    let mut nodes_used = HashSet::new();
    let node = &cluster.nodes[0];
    for key in &keys {
        let material = format!("s=default;t=;h%3Ax-api-key={key};");
        let redis_keys = backends[0].redis_keys(&material, &limit);
        let slots: HashSet<String> = redis_keys
            .iter()
            .map(|k| node.cli(&["CLUSTER", "KEYSLOT", k]).trim().to_owned())
            .collect();
        assert_eq!(slots.len(), 1, "{redis_keys:?}");
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.cli(&["EXISTS", &redis_keys[0]]).trim() == "1" {
                nodes_used.insert(i);
            }
        }
    }
    assert!(nodes_used.len() >= 2, "keys on nodes {nodes_used:?} only");
}
