//! Circuit breaker behaviour with Tokio's paused clock.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use tokio::time::advance;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::circuit::{
    CircuitBreaker, CircuitBreakerLayer, CircuitConfig, CircuitState, EjectionGroup, Outcome,
    Window,
};

fn config() -> CircuitConfig {
    CircuitConfig::default()
        .window(Window::Count(10))
        .failure_rate(0.5)
        .minimum_calls(4)
        .consecutive_failures(None)
        .open_duration(Duration::from_secs(10), Duration::from_secs(60))
        .half_open_probes(2)
}

fn record(b: &CircuitBreaker, outcome: Outcome) {
    b.try_acquire().expect("admitted").record(outcome);
}

#[tokio::test(start_paused = true)]
async fn trips_by_failure_rate_after_minimum_calls() {
    let b = CircuitBreaker::new("t", config());
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    // Three calls, all failed: under the minimum of four, still closed.
    assert_eq!(b.state(), CircuitState::Closed);
    record(&b, Outcome::Success);
    // 3 of 4 failed >= 50 %: open.
    assert_eq!(b.state(), CircuitState::Open);
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn below_threshold_stays_closed() {
    let b = CircuitBreaker::new("t", config());
    for i in 0..20 {
        record(
            &b,
            if i % 4 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
        );
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn trips_by_consecutive_failures() {
    let b = CircuitBreaker::new(
        "t",
        config().minimum_calls(100).consecutive_failures(Some(3)),
    );
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    record(&b, Outcome::Success);
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Closed, "the streak was broken");
    record(&b, Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = CircuitBreaker::new(
        "t",
        config().window(Window::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        }),
    );
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    record(&b, Outcome::Failure);
    advance(Duration::from_secs(11)).await;
    record(&b, Outcome::Failure);
    // Only one failure is inside the window: under the minimum of four calls.
    assert_eq!(b.state(), CircuitState::Closed);
}

async fn open_breaker(b: &CircuitBreaker) {
    for _ in 0..4 {
        record(b, Outcome::Failure);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_successes_close() {
    let b = CircuitBreaker::new("t", config());
    open_breaker(&b).await;
    advance(Duration::from_secs(10)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    // Only two probes at a time.
    assert!(b.try_acquire().is_err());
    p1.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    p2.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
    assert!(!b.try_acquire().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn half_open_failure_reopens_for_longer_capped() {
    let b = CircuitBreaker::new("t", config());
    open_breaker(&b).await;
    let mut expected = [20u64, 40, 60, 60];
    for want in expected.iter_mut() {
        let wait = b.try_acquire().unwrap_err().retry_after;
        advance(wait).await;
        b.try_acquire().unwrap().record(Outcome::Failure);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(*want)
        );
    }
    // Recovery resets the growth.
    advance(Duration::from_secs(60)).await;
    record(&b, Outcome::Success);
    record(&b, Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
    open_breaker(&b).await;
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Duration::from_secs(10)
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_gives_its_slot_back() {
    let b = CircuitBreaker::new("t", config().half_open_probes(1));
    open_breaker(&b).await;
    advance(Duration::from_secs(10)).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(probe); // cancelled call
    let probe = b.try_acquire().expect("slot returned");
    probe.record(Outcome::Success);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn transitions_are_observable() {
    let b = CircuitBreaker::new("obs", config());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    b.on_transition(move |name, t| sink.lock().unwrap().push((name.to_owned(), t.from, t.to)));
    let mut rx = b.subscribe();
    open_breaker(&b).await;
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), CircuitState::Open);
    assert_eq!(
        seen.lock().unwrap()[0],
        ("obs".to_owned(), CircuitState::Closed, CircuitState::Open)
    );
}

/// An upstream that answers with the status it is told, counting calls.
fn upstream(
    status: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |_req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let code = status.load(Ordering::SeqCst) as u16;
        async move {
            let mut r = Response::new(String::new());
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            Ok(r)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn layer_fails_fast_with_503_and_does_not_call_inner() {
    let status = Arc::new(AtomicUsize::new(500));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new("orders", config());
    let svc = ServiceBuilder::new()
        .layer(tower_gateway::reject::RenderLayer::new())
        .layer(layer.clone())
        .service(upstream(status.clone(), calls.clone()));
    for _ in 0..4 {
        let r = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    assert_eq!(layer.breaker().unwrap().state(), CircuitState::Open);
    let r = svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "10");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "inner not called while open"
    );

    let grpc = Request::builder()
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    let r = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "14");

    // Recovery through the layer.
    status.store(200, Ordering::SeqCst);
    advance(Duration::from_secs(10)).await;
    for _ in 0..2 {
        let r = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(layer.breaker().unwrap().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_failures() {
    let status = Arc::new(AtomicUsize::new(404));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new("orders", config().consecutive_failures(Some(2)));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream(status, calls));
    for _ in 0..50 {
        let r = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(layer.breaker().unwrap().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn concurrent_probes_are_limited_through_the_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let c = calls.clone();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    let inner = tower::service_fn(move |_req: Request<String>| {
        c.fetch_add(1, Ordering::SeqCst);
        let mut gate = gate_rx.clone();
        let fail = f.load(Ordering::SeqCst);
        async move {
            if !fail {
                let _ = gate.wait_for(|open| *open).await;
            }
            let mut r = Response::new(String::new());
            *r.status_mut() = if fail {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(r)
        }
    });
    let layer = CircuitBreakerLayer::new("inv", config());
    let svc = ServiceBuilder::new().layer(layer.clone()).service(inner);
    for _ in 0..4 {
        svc.clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
    }
    failing.store(false, Ordering::SeqCst);
    advance(Duration::from_secs(10)).await;
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(tokio::spawn(
            svc.clone().oneshot(Request::new(String::new())),
        ));
    }
    tokio::task::yield_now().await;
    // Let the spawned calls reach the breaker.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate_tx.send(true).unwrap();
    let mut statuses = Vec::new();
    for p in pending {
        statuses.push(p.await.unwrap().unwrap().status());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, refused), (2, 3), "{statuses:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 2);
    assert_eq!(layer.breaker().unwrap().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn per_endpoint_ejection_makes_poll_ready_pending_and_spares_the_last() {
    let group = EjectionGroup::new(0.5);
    let layer = CircuitBreakerLayer::per_endpoint("inventory", config(), group.clone());
    let status = Arc::new(AtomicUsize::new(503));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut a = layer.layer_service(upstream(status.clone(), calls.clone()));
    let mut b = layer.layer_service(upstream(status.clone(), calls.clone()));
    assert_eq!(group.members(), 2);
    for _ in 0..4 {
        a.ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await
            .unwrap();
    }
    assert_eq!(a.breaker().state(), CircuitState::Open);
    assert_eq!(group.ejected(), 1);
    // An ejected endpoint is not ready.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(a.poll_ready(&mut cx).is_pending());
    // The other endpoint fails as badly, but it is the last one: not ejected.
    for _ in 0..8 {
        b.ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await
            .unwrap();
    }
    assert_eq!(b.breaker().state(), CircuitState::Closed);
    assert_eq!(group.ejected(), 1);
    // When the open time is over, the ejected endpoint is ready for probes.
    advance(Duration::from_secs(10)).await;
    tokio::time::timeout(Duration::from_secs(1), a.ready())
        .await
        .expect("ready again")
        .unwrap();
    drop(a);
    assert_eq!(group.members(), 1);
    assert_eq!(
        group.ejected(),
        0,
        "a dropped endpoint releases its ejection"
    );
}

trait LayerExt {
    fn layer_service<S>(&self, s: S) -> tower_gateway::circuit::CircuitBreakerService<S>;
}

impl LayerExt for CircuitBreakerLayer {
    fn layer_service<S>(&self, s: S) -> tower_gateway::circuit::CircuitBreakerService<S> {
        tower_layer::Layer::layer(self, s)
    }
}
