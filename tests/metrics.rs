#![cfg(feature = "metrics")]
//! MetricsLayer: what is counted, under which labels, and that cardinality
//! stays bounded whatever clients send.

use std::{collections::HashSet, convert::Infallible};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::{
    Identity,
    identity::RoleSource,
    metrics::{ConsumerMetricsLayer, GatewayMetrics, MetricsConfig, MetricsLayer},
    route::RouteTemplate,
};

/// The value of the sample `name{labels}` in an OpenMetrics exposition, with
/// the labels given in the order they are encoded.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

/// Distinct values of `label` among samples of `name`.
fn label_values(text: &str, name: &str, label: &str) -> HashSet<String> {
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let start = l.find(&key)? + key.len();
            let end = l[start..].find('"')? + start;
            Some(l[start..end].to_owned())
        })
        .collect()
}

fn status_service<B: Send + 'static>(
    route: Option<&'static str>,
) -> impl tower::Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    tower::service_fn(move |req: Request<B>| async move {
        let _ = route;
        let code: u16 = req
            .uri()
            .query()
            .and_then(|q| q.parse().ok())
            .unwrap_or(200);
        let mut r = Response::new(Full::new(Bytes::from_static(b"hello")));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(r)
    })
}

/// Sets the route template, as a router would.
fn with_route(
    template: &'static str,
) -> impl Fn(Request<Full<Bytes>>) -> Request<Full<Bytes>> + Clone {
    move |mut req| {
        req.extensions_mut().insert(RouteTemplate::new(template));
        req
    }
}

#[tokio::test]
async fn counters_equal_requests_per_status() {
    let metrics = GatewayMetrics::default();
    let svc = ServiceBuilder::new()
        .map_request(with_route("/orders/{id}"))
        .layer(MetricsLayer::new(&metrics))
        .service(status_service(None));
    let plan = [(200u16, 7usize), (404, 3), (503, 2)];
    for (status, n) in plan {
        for i in 0..n {
            let req = Request::get(format!("/orders/{i}?{status}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), status);
            // Consume the body so the response is complete.
            resp.into_body().collect().await.unwrap();
        }
    }
    let text = metrics.encode();
    for (status, n) in plan {
        let key = format!(
            "gateway_requests_total{{route=\"/orders/{{id}}\",method=\"GET\",status=\"{status}\"}}"
        );
        assert_eq!(sample(&text, &key), Some(n as f64), "{key}\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "gateway_request_duration_seconds_count{route=\"/orders/{id}\",method=\"GET\"}"
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_response_size_bytes_sum{route=\"/orders/{id}\",method=\"GET\"}"
        ),
        Some(12.0 * 5.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_requests_in_flight{route=\"/orders/{id}\",method=\"GET\"}"
        ),
        Some(0.0)
    );
    // No raw path ever becomes a label.
    assert!(!text.contains("/orders/1\""), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn ten_thousand_paths_and_consumers_keep_cardinality_bounded() {
    let metrics = GatewayMetrics::new(MetricsConfig::default().max_routes(50).max_consumers(20));
    // A careless route extractor that returns raw paths: still capped.
    let svc = ServiceBuilder::new()
        .map_request(|mut req: Request<Full<Bytes>>| {
            let sub = req.uri().path().trim_start_matches('/').to_owned();
            let claims = serde_json::json!({ "sub": sub });
            let identity =
                Identity::from_claims(claims.as_object().unwrap().clone(), &RoleSource::default());
            req.extensions_mut().insert(identity);
            req
        })
        .layer(MetricsLayer::new(&metrics).route_from(|parts| Some(parts.uri.path().to_owned())))
        .layer(ConsumerMetricsLayer::new(&metrics))
        .service(status_service(None));
    for i in 0..10_000 {
        let req = Request::builder()
            .method(if i % 2 == 0 { "GET" } else { "X-CUSTOM" })
            .uri(format!("/p{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.clone()
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    let text = metrics.encode();
    let routes = label_values(&text, "gateway_requests_total", "route");
    assert_eq!(routes.len(), 51, "50 routes + other");
    assert!(routes.contains("other"));
    let methods = label_values(&text, "gateway_requests_total", "method");
    assert_eq!(
        methods,
        HashSet::from(["GET".to_owned(), "OTHER".to_owned()])
    );
    let consumers = label_values(&text, "gateway_consumer_requests_total", "consumer");
    assert_eq!(consumers.len(), 21, "20 consumers + other");
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 10_000.0);
}

#[tokio::test]
async fn grpc_calls_are_labelled_with_service_method_and_final_status() {
    let metrics = GatewayMetrics::default();
    let svc = ServiceBuilder::new()
        .map_request(with_route("grpc"))
        .layer(MetricsLayer::new(&metrics))
        .service(tower::service_fn(|req: Request<_>| async move {
            let code = if req.uri().path().ends_with("Fail") {
                "14"
            } else {
                "0"
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            Ok::<_, Infallible>(r)
        }));
    for path in ["/shop.Orders/Get", "/shop.Orders/Get", "/shop.Orders/Fail"] {
        let req = Request::post(path)
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.clone()
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "gateway_grpc_requests_total{grpc_service=\"shop.Orders\",grpc_method=\"Get\",grpc_status=\"OK\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gateway_grpc_requests_total{grpc_service=\"shop.Orders\",grpc_method=\"Fail\",grpc_status=\"UNAVAILABLE\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_dropped_response_still_leaves_in_flight_at_zero() {
    let metrics = GatewayMetrics::default();
    let svc = ServiceBuilder::new()
        .map_request(with_route("/x"))
        .layer(MetricsLayer::new(&metrics))
        .service(status_service(None));
    let resp = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "gateway_requests_in_flight{route=\"/x\",method=\"GET\"}"
        ),
        Some(1.0)
    );
    drop(resp);
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "gateway_requests_in_flight{route=\"/x\",method=\"GET\"}"
        ),
        Some(0.0)
    );
}

#[cfg(feature = "jwt")]
mod support;

/// The recommended order — metrics outside authentication — still labels
/// per-consumer series: the auth layer hands the verified identity back in
/// the response extensions.
#[cfg(feature = "jwt")]
#[tokio::test]
async fn consumers_are_counted_after_auth_with_request_metrics_outside() {
    use tower_gateway::auth::{Algorithm, Issuer, JwtAuthLayer, JwtKey};
    let metrics = GatewayMetrics::default();
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(support::ISSUER)
                .audience(support::AUDIENCE)
                .key(JwtKey::hmac(support::HMAC_SECRET)),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_request(with_route("/orders"))
        .layer(MetricsLayer::new(&metrics))
        .layer(auth)
        .layer(ConsumerMetricsLayer::new(&metrics))
        .service(status_service(None));
    for (who, n) in [("alice", 3), ("bob", 2)] {
        let token = support::mint(Algorithm::HS256, None, &support::claims(who, &["user"]));
        for _ in 0..n {
            let req = Request::get("/orders")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    }
    // An unauthenticated request has no consumer.
    svc.clone()
        .oneshot(
            Request::get("/orders")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "gateway_consumer_requests_total{consumer=\"alice\",status=\"200\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gateway_consumer_requests_total{consumer=\"bob\",status=\"200\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        label_values(&text, "gateway_consumer_requests_total", "consumer").len(),
        2
    );
}

#[tokio::test]
async fn request_size_counts_bytes_read_not_the_declared_length() {
    let metrics = GatewayMetrics::default();
    // The inner service reads the body of `/read` and answers `/early`
    // without reading it (as a 401 would).
    let svc = ServiceBuilder::new()
        .map_request(with_route("/upload"))
        .layer(MetricsLayer::new(&metrics))
        .service(tower::service_fn(
            |req: Request<tower_gateway::metrics::MetricsRequestBody<Full<Bytes>>>| async move {
                if req.uri().path() == "/read" {
                    let _ = req.into_body().collect().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            },
        ));
    for (path, declared) in [("/read", "5"), ("/early", "9000000000000000000")] {
        let req = Request::post(path)
            .header("content-length", declared)
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let text = metrics.encode();
    let labels = "{route=\"/upload\",method=\"POST\"}";
    assert_eq!(
        sample(&text, &format!("gateway_request_size_bytes_sum{labels}")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("gateway_request_size_bytes_count{labels}")),
        Some(2.0)
    );
}
