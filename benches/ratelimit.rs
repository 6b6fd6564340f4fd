//! Rate limiting: the local limiter's decision cost, the Redis limiter's
//! throughput at 1, 16 and 64 concurrent requests, and the exhausted-key
//! memory — each read against a reference measured in the same run:
//!
//! - `local/*` against `local/reference_governor_keyed_check` (governor's
//!   own keyed limiter, one window, same key);
//! - `redis_throughput/layer_c{N}` against the ceiling of the same script
//!   on the same Redis, measured with `redis-benchmark -c N` in this run;
//! - `exhausted_shortcut/remembered_c16` against `…/round_trip_c16`.
//!
//! Run: `cargo bench --bench ratelimit --all-features`. Needs `redis-server`
//! and `redis-benchmark` on PATH for the Redis groups (they are skipped,
//! loudly, without them; `RATELIMIT_BENCH_LOCAL_ONLY=1` skips them too).
//! A summary of ratios is printed at the end.

#[path = "../tests/support_redis/mod.rs"]
mod support_redis;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    hint::black_box,
    num::NonZeroU32,
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_gateway::ratelimit::{
    FailurePolicy, Fixed, Limit, LocalLimiter, QuotaHeaders, RateLimitLayer, RedisBackend,
    RedisConfig, SCRIPT, Window,
};

/// Figures to print at the end: name → requests per second.
static SUMMARY: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());

fn record(name: &str, rps: f64) {
    SUMMARY.lock().unwrap().insert(name.to_owned(), rps);
}

/// Criterion's mean for a bench, as requests per second.
fn criterion_rps(group: &str, bench: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let path = target
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let ns = json["mean"]["point_estimate"].as_f64()?;
    Some(1e9 / ns)
}

fn local(c: &mut Criterion) {
    let mut g = c.benchmark_group("local");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // Limits that never refuse at these rates (bursts of 2^32, refilled at
    // the highest rate Redis's microsecond clock can express), so every
    // iteration is a full admission; checked after each bench.
    let max = NonZeroU32::MAX;
    let governor = governor::RateLimiter::keyed(
        governor::Quota::per_second(NonZeroU32::new(1_000_000).unwrap()).allow_burst(max),
    );
    let key = String::from("s=default;t=;sub=alice;");
    g.bench_function("reference_governor_keyed_check", |b| {
        b.iter(|| black_box(governor.check_key(black_box(&key)).is_ok()))
    });
    assert!(governor.check_key(&key).is_ok());

    let limiter = LocalLimiter::new();
    let second = Window::new("second", 1_000_000, Duration::from_secs(1)).burst(max.get());
    let hour = Window::new("hour", 3_600_000_000, Duration::from_secs(3600)).burst(max.get());
    let one = Limit::new().window(second);
    one.validate().unwrap();
    g.bench_function("check_one_window", |b| {
        b.iter(|| black_box(limiter.check(black_box(&key), &one).is_allowed()))
    });
    assert!(limiter.check(&key, &one).is_allowed());
    let two = one.clone().window(hour);
    two.validate().unwrap();
    g.bench_function("check_two_windows", |b| {
        b.iter(|| black_box(limiter.check(black_box(&key), &two).is_allowed()))
    });
    assert!(limiter.check(&key, &two).is_allowed());
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("s=default;t=;sub=u{i};"))
        .collect();
    let mut i = 0;
    g.bench_function("check_two_windows_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(&keys[i], &two).is_allowed())
        })
    });

    // The whole layer around a service that answers at once.
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let layer = RateLimitLayer::builder()
        .key(Fixed("bench"))
        .limit(two.clone())
        .build()
        .unwrap();
    let mut bare = inner;
    let mut limited = layer.layer(inner);
    g.bench_function("reference_bare_service", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(String::new()));
                black_box(r.await.unwrap())
            })
        })
    });
    g.bench_function("layer_two_windows", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = limited
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(String::new()));
                black_box(r.await.unwrap())
            })
        })
    });
    let hidden = RateLimitLayer::builder()
        .key(Fixed("bench-hidden"))
        .limit(two.clone())
        .headers(QuotaHeaders::default().hidden(true))
        .build()
        .unwrap();
    let mut hidden = hidden.layer(inner);
    g.bench_function("layer_two_windows_no_headers", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = hidden
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(String::new()));
                black_box(r.await.unwrap())
            })
        })
    });
    for svc in [&mut limited, &mut hidden] {
        let last = rt.block_on(async {
            let r = svc.ready().await.unwrap().call(Request::new(String::new()));
            r.await.unwrap()
        });
        assert_eq!(
            last.status(),
            StatusCode::OK,
            "the benches measured refusals"
        );
    }
    g.finish();
}

type Res = Response<String>;

/// Sends `iters` requests through `svc` from `concurrency` tasks at once
/// and returns the time they took; every answer must be `expect`.
async fn drive<S>(svc: &S, iters: u64, concurrency: u64, expect: StatusCode) -> Duration
where
    S: Service<Request<String>, Response = Res, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let n = iters / concurrency + u64::from(worker < iters % concurrency);
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let response = svc.clone().oneshot(Request::new(String::new())).await;
                assert_eq!(response.unwrap().status(), expect);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// The same script, same key and arguments, driven by `redis-benchmark`
/// with `clients` connections: the ceiling for this machine.
fn redis_benchmark_ceiling(
    port: u16,
    key: &str,
    window: &Window,
    clients: u64,
    pipeline: u64,
) -> Option<f64> {
    let port = port.to_string();
    let sha = Command::new("redis-cli")
        .args(["-p", &port, "SCRIPT", "LOAD", SCRIPT])
        .output()
        .ok()?;
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_owned();
    let t_us = window.emission_interval().as_micros().to_string();
    let tau_us = (window.emission_interval() * (window.burst_size() - 1))
        .as_micros()
        .to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port,
            "-c",
            &clients.to_string(),
            "-n",
            "200000",
            "--csv",
        ])
        .args(["-P", &pipeline.to_string()])
        .args(["EVALSHA", &sha, "1", key, &t_us, &tau_us])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("\"EVALSHA"))?;
    row.split(',').nth(1)?.trim_matches('"').parse().ok()
}

fn redis(c: &mut Criterion) {
    // For profiling the local path alone.
    if std::env::var_os("RATELIMIT_BENCH_LOCAL_ONLY").is_some() {
        return;
    }
    if !support_redis::redis_available() {
        return;
    }
    let server = support_redis::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = RedisConfig::default().timeout(Duration::from_secs(1));

    // Never refuses at these rates: every decision is a full GET + SET.
    let window = Window::new("second", 1_000_000, Duration::from_secs(1));
    let redis = rt
        .block_on(RedisBackend::connect(&server.url(), config.clone()))
        .unwrap();
    let svc = {
        let _guard = rt.enter();
        RateLimitLayer::builder()
            .key(Fixed("bench"))
            .limit(Limit::new().window(window.clone()))
            .redis(redis.clone())
            .on_backend_error(FailurePolicy::Deny)
            .build()
            .unwrap()
            .layer(service_fn(|_req: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
    };
    let mut g = c.benchmark_group("redis_throughput");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10)
        .throughput(Throughput::Elements(1));
    for concurrency in [1u64, 16, 64] {
        g.bench_function(format!("layer_c{concurrency}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let svc = svc.clone();
                async move { drive(&svc, iters, concurrency, StatusCode::OK).await }
            })
        });
    }
    g.finish();
    let stats = redis.stats();
    assert_eq!(stats.errors, 0, "redis errors during the benchmark");
    let key = &redis.redis_keys(
        "s=default;t=;fixed=bench;",
        &Limit::new().window(window.clone()),
    )[0];
    for concurrency in [1u64, 16, 64] {
        if let Some(rps) = criterion_rps("redis_throughput", &format!("layer_c{concurrency}")) {
            record(&format!("redis layer, {concurrency} concurrent"), rps);
        }
        // One request per client in flight, as the layer has one per
        // concurrent request; and the server's ceiling with 16-deep
        // pipelines, which a multiplexed connection can approach.
        for pipeline in [1, 16] {
            if let Some(rps) =
                redis_benchmark_ceiling(server.port(), key, &window, concurrency, pipeline)
            {
                record(
                    &format!("redis-benchmark -c {concurrency} -P {pipeline}"),
                    rps,
                );
            }
        }
    }

    // A client hammering past its limit, with and without the memory.
    let mut g = c.benchmark_group("exhausted_shortcut");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10)
        .throughput(Throughput::Elements(1));
    for (name, remember) in [("round_trip_c16", false), ("remembered_c16", true)] {
        let backend = rt
            .block_on(RedisBackend::connect(
                &server.url(),
                config.clone().remember_exhausted(remember),
            ))
            .unwrap();
        let svc = {
            let _guard = rt.enter();
            RateLimitLayer::builder()
                .key(Fixed("hammer"))
                .scope(name)
                .limit(Limit::new().per_hour(1))
                .redis(backend.clone())
                .on_backend_error(FailurePolicy::Deny)
                .build()
                .unwrap()
                .layer(service_fn(|_req: Request<String>| async {
                    Ok::<_, Infallible>(Response::new(String::new()))
                }))
        };
        rt.block_on(drive(&svc, 1, 1, StatusCode::OK));
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let svc = svc.clone();
                async move { drive(&svc, iters, 16, StatusCode::TOO_MANY_REQUESTS).await }
            })
        });
        let stats = backend.stats();
        println!(
            "exhausted_shortcut/{name}: {} round trips, {} answered from memory",
            stats.calls, stats.remembered
        );
        if let Some(rps) = criterion_rps("exhausted_shortcut", name) {
            record(&format!("hammering past the limit, {name}"), rps);
        }
    }
    g.finish();
}

fn summary(_c: &mut Criterion) {
    for (group, bench, name) in [
        (
            "local",
            "reference_governor_keyed_check",
            "governor keyed check",
        ),
        ("local", "check_one_window", "local check, one window"),
        ("local", "check_two_windows", "local check, two windows"),
        (
            "local",
            "check_two_windows_10k_keys",
            "local check, two windows, 10k keys",
        ),
        ("local", "reference_bare_service", "bare service"),
        ("local", "layer_two_windows", "layer, local, two windows"),
        (
            "local",
            "layer_two_windows_no_headers",
            "layer, local, two windows, headers hidden",
        ),
    ] {
        if let Some(rps) = criterion_rps(group, bench) {
            record(name, rps);
        }
    }
    let s = SUMMARY.lock().unwrap();
    println!("\n== rate-limit summary (this run) ==");
    for (name, rps) in s.iter() {
        println!("{name:<48} {:>12.0} req/s  ({:.0} ns each)", rps, 1e9 / rps);
    }
    let ratio = |a: &str, b: &str| Some(s.get(a)? / s.get(b)?);
    if let Some(r) = ratio("governor keyed check", "local check, two windows") {
        println!("local two-window check costs {r:.2}x governor's one-window keyed check");
    }
    for n in [1, 16, 64] {
        for p in [1, 16] {
            if let Some(r) = ratio(
                &format!("redis layer, {n} concurrent"),
                &format!("redis-benchmark -c {n} -P {p}"),
            ) {
                println!("redis layer at {n} concurrent: {r:.2}x redis-benchmark -c {n} -P {p}");
            }
        }
    }
    if let Some(r) = ratio(
        "hammering past the limit, remembered_c16",
        "hammering past the limit, round_trip_c16",
    ) {
        println!("exhausted-key memory: {r:.1}x the refusals per second of a round trip each");
    }
}

criterion_group!(benches, local, redis, summary);
criterion_main!(benches);
