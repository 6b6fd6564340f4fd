//! Per-request cost of the circuit breaker and the metrics layer.
//!
//! Each figure is read against `reference_bare_service`: the same request
//! through the same inner service with no layer, measured in the same run.
//!
//! Run: `cargo bench --bench layers`.

use std::{convert::Infallible, hint::black_box};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::{
    circuit::{CircuitBreaker, CircuitBreakerLayer, CircuitConfig, Outcome},
    metrics::{GatewayMetrics, MetricsLayer},
    route::RouteTemplate,
};

fn request() -> Request<Full<Bytes>> {
    let mut req = Request::get("/orders/7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(RouteTemplate::new("/orders/{id}"));
    req
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    fn inner<B>() -> impl tower::Service<
        Request<B>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        tower::service_fn(|_req: Request<B>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    }
    let metrics = GatewayMetrics::default();
    let mut bare = inner();
    let mut with_breaker = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new("orders", CircuitConfig::default()))
        .service(inner());
    let mut with_metrics = ServiceBuilder::new()
        .layer(MetricsLayer::new(&metrics))
        .service(inner());

    let mut g = c.benchmark_group("layers");
    g.bench_function("reference_bare_service", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare.ready().await.unwrap().call(request()).await.unwrap();
                r.into_body().collect().await.unwrap()
            })
        })
    });
    g.bench_function("circuit_breaker_closed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = with_breaker
                    .ready()
                    .await
                    .unwrap()
                    .call(request())
                    .await
                    .unwrap();
                r.into_body().collect().await.unwrap()
            })
        })
    });
    g.bench_function("metrics_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = with_metrics
                    .ready()
                    .await
                    .unwrap()
                    .call(request())
                    .await
                    .unwrap();
                r.into_body().collect().await.unwrap()
            })
        })
    });
    g.finish();

    let breaker = CircuitBreaker::new("raw", CircuitConfig::default());
    let mut g = c.benchmark_group("breaker");
    g.bench_function("acquire_and_record_success", |b| {
        b.iter(|| black_box(breaker.try_acquire().unwrap()).record(Outcome::Success))
    });
    g.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
