//! The Order, Payment and Inventory services: each verifies the token again
//! and enforces its own RBAC (defence in depth, as the seed asks), and
//! serves only over mutual TLS.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Extension, Json, Router,
    extract::Path,
    http::{Method, StatusCode},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::{
    Identity,
    auth::{Issuer, JwtAuthLayer},
    metrics::{GatewayMetrics, MetricsConfig, MetricsHandler, MetricsLayer},
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
    route::RouteTemplate,
    tls::{self, MtlsAcceptor},
};

use super::{BoxError, auth_server::AUDIENCE, pki::DevPki};

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Orders,
    Payments,
    Inventory,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Payments => "payments",
            Self::Inventory => "inventory",
        }
    }

    /// The service's rules. The seed's Express example rejects admins on
    /// `POST /orders`; with the role hierarchy (`admin` implies `user`) they
    /// pass. The gateway enforces the union of every service's rules.
    pub fn rules(self) -> Vec<Rule> {
        let rule = |path: &str, method: Method| Rule::exact(path).methods([method]);
        match self {
            Self::Orders => vec![
                rule("/orders", Method::GET).any_of(["admin"]),
                rule("/orders", Method::POST).any_of(["user"]),
                rule("/orders/{id}", Method::GET).any_of(["user"]),
            ],
            Self::Payments => vec![
                rule("/payments", Method::POST).any_of(["user"]),
                rule("/payments", Method::GET).any_of(["admin"]),
            ],
            Self::Inventory => vec![
                rule("/inventory", Method::GET).authenticated(),
                rule("/inventory/{sku}", Method::GET).authenticated(),
                rule("/inventory/{sku}", Method::PUT).any_of(["admin"]),
            ],
        }
    }

    /// A deny-by-default policy of `rules`.
    pub fn policy(rules: impl IntoIterator<Item = Rule>) -> Result<Policy, BoxError> {
        let builder = rules
            .into_iter()
            .fold(Policy::builder().deny_unmatched(true), |b, r| b.rule(r));
        Ok(builder.build()?)
    }
}

type Store = Arc<Mutex<Vec<Value>>>;
/// Stock per SKU.
type StockStore = Arc<Mutex<Vec<(String, u32)>>>;

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Deserialize)]
struct NewPayment {
    order_id: u64,
    amount_cents: u64,
}

#[derive(Deserialize)]
struct Stock {
    quantity: u32,
}

fn who(identity: &Identity) -> String {
    identity.subject().unwrap_or("-").to_owned()
}

fn routes(kind: Kind) -> Router {
    let store: Store = Arc::default();
    match kind {
        Kind::Orders => Router::new()
            .route(
                "/orders",
                get(|Extension(store): Extension<Store>| async move {
                    let orders = store.lock().map(|o| o.clone()).unwrap_or_default();
                    Json(json!({ "orders": orders }))
                })
                .post(
                    |Extension(store): Extension<Store>,
                     Extension(id): Extension<Identity>,
                     Json(order): Json<NewOrder>| async move {
                        if order.quantity == 0 || order.item.is_empty() || order.item.len() > 200 {
                            return Err((
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "item and a positive quantity required",
                            ));
                        }
                        let Ok(mut orders) = store.lock() else {
                            return Err((StatusCode::INTERNAL_SERVER_ERROR, "store unavailable"));
                        };
                        let created = json!({
                            "id": orders.len() as u64 + 1,
                            "item": order.item,
                            "quantity": order.quantity,
                            "owner": who(&id),
                        });
                        orders.push(created.clone());
                        Ok((StatusCode::CREATED, Json(created)))
                    },
                ),
            )
            .route(
                "/orders/{id}",
                get(
                    |Extension(store): Extension<Store>, Path(order): Path<u64>| async move {
                        let orders = store.lock().map(|o| o.clone()).unwrap_or_default();
                        orders
                            .into_iter()
                            .find(|o| o["id"] == order)
                            .map(Json)
                            .ok_or(StatusCode::NOT_FOUND)
                    },
                ),
            )
            .layer(Extension(store)),
        Kind::Payments => Router::new()
            .route(
                "/payments",
                get(|Extension(store): Extension<Store>| async move {
                    let payments = store.lock().map(|p| p.clone()).unwrap_or_default();
                    Json(json!({ "payments": payments }))
                })
                .post(
                    |Extension(store): Extension<Store>,
                     Extension(id): Extension<Identity>,
                     Json(payment): Json<NewPayment>| async move {
                        if payment.amount_cents == 0 {
                            return Err((
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "amount must be positive",
                            ));
                        }
                        let Ok(mut payments) = store.lock() else {
                            return Err((StatusCode::INTERNAL_SERVER_ERROR, "store unavailable"));
                        };
                        let created = json!({
                            "payment_id": payments.len() as u64 + 1,
                            "order_id": payment.order_id,
                            "amount_cents": payment.amount_cents,
                            "payer": who(&id),
                            "status": "authorized",
                        });
                        payments.push(created.clone());
                        Ok((StatusCode::CREATED, Json(created)))
                    },
                ),
            )
            .layer(Extension(store)),
        Kind::Inventory => {
            let stock: StockStore =
                Arc::new(Mutex::new(vec![("sku-1".into(), 12), ("sku-2".into(), 0)]));
            Router::new()
                .route(
                    "/inventory",
                    get(
                        |Extension(stock): Extension<StockStore>| async move {
                            let items: serde_json::Map<String, Value> = stock
                                .lock()
                                .map(|s| s.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
                                .unwrap_or_default();
                            Json(json!({ "items": items }))
                        },
                    ),
                )
                .route(
                    "/inventory/{sku}",
                    get(
                        |Extension(stock): Extension<StockStore>,
                         Path(sku): Path<String>| async move {
                            let found = stock
                                .lock()
                                .ok()
                                .and_then(|s| s.iter().find(|(k, _)| *k == sku).map(|(_, v)| *v));
                            found
                                .map(|q| Json(json!({"sku": sku, "quantity": q})))
                                .ok_or(StatusCode::NOT_FOUND)
                        },
                    )
                    .put(
                        |Extension(stock): Extension<StockStore>,
                         Path(sku): Path<String>,
                         Json(new): Json<Stock>| async move {
                            if sku.len() > 64 {
                                return Err(StatusCode::UNPROCESSABLE_ENTITY);
                            }
                            let Ok(mut stock) = stock.lock() else {
                                return Err(StatusCode::INTERNAL_SERVER_ERROR);
                            };
                            match stock.iter_mut().find(|(k, _)| *k == sku) {
                                Some(entry) => entry.1 = new.quantity,
                                None => stock.push((sku.clone(), new.quantity)),
                            }
                            Ok(Json(json!({"sku": sku, "quantity": new.quantity})))
                        },
                    ),
                )
                .layer(Extension(stock))
        }
    }
}

/// With feature `otel`: each request's handler runs in a span that
/// continues the caller's trace (its W3C `traceparent` header).
#[cfg(feature = "otel")]
fn traced(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(continue_trace))
}

#[cfg(not(feature = "otel"))]
fn traced(router: Router) -> Router {
    router
}

/// Runs the handler in a span whose parent is the trace context the
/// gateway sent (W3C Trace Context). The propagator is a local value, not
/// a global one: nothing here changes how the rest of the process traces.
#[cfg(feature = "otel")]
async fn continue_trace(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// The request headers as an OpenTelemetry carrier.
    struct Headers<'a>(&'a axum::http::HeaderMap);

    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&Headers(request.headers()));
    let span = tracing::info_span!(
        "handle",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
    );
    // Fails only without an OpenTelemetry layer, when there is no trace to
    // continue.
    let _ = span.set_parent(parent);
    next.run(request).instrument(span).await
}

/// Starts one service on `listen` (port 0: a free one), over mutual TLS. With
/// `metrics`, the service's own Prometheus metrics (prefix `service`) are
/// served in plain HTTP on that address, for `examples/observability`.
pub async fn start(
    kind: Kind,
    listen: SocketAddr,
    pki: &DevPki,
    issuer: &str,
    metrics: Option<SocketAddr>,
) -> Result<SocketAddr, BoxError> {
    // Dropping the handle leaves the service running.
    Ok(spawn(kind, listen, pki, issuer, metrics).await?.addr)
}

/// A running service instance, as [`spawn`] returns it. Dropping it leaves
/// the instance running; [`Instance::kill`] stops it.
// The demo never kills its services; tests/seed_story.rs does.
#[allow(dead_code)]
pub struct Instance {
    pub addr: SocketAddr,
    kill: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<tower_gateway::server::ShutdownReport>,
}

#[allow(dead_code)]
impl Instance {
    /// Stops the instance the way a crash would, as far as its clients can
    /// tell: the port closes and open connections are cut, requests in
    /// flight included (no shutdown grace). `tests/seed_story.rs` kills
    /// one under load.
    pub async fn kill(self) {
        let _ = self.kill.send(());
        let _ = self.task.await;
    }
}

/// [`start`], returning a handle that can [kill](Instance::kill) the
/// instance.
pub async fn spawn(
    kind: Kind,
    listen: SocketAddr,
    pki: &DevPki,
    issuer: &str,
    metrics: Option<SocketAddr>,
) -> Result<Instance, BoxError> {
    let auth = JwtAuthLayer::builder()
        .issuer(Issuer::new(issuer).audience(AUDIENCE).oidc_discovery())
        .build()?;
    let rbac = RbacLayer::new(Kind::policy(kind.rules())?)
        .hierarchy(RoleHierarchy::new().inherit("admin", ["user"]));
    let registry = GatewayMetrics::new(MetricsConfig::default().prefix("service"));
    let name = kind.name();
    let app = ServiceBuilder::new()
        .map_request(
            move |mut request: axum::http::Request<tower_gateway::server::Body>| {
                request.extensions_mut().insert(RouteTemplate::new(name));
                request
            },
        )
        .layer(MetricsLayer::new(&registry))
        .layer(auth)
        .layer(rbac)
        .service(traced(routes(kind)));
    if let Some(addr) = metrics {
        let listener = TcpListener::bind(addr).await?;
        let exporter = Router::new().route_service("/metrics", MetricsHandler::new(&registry));
        tokio::spawn(async move { axum::serve(listener, exporter).await });
    }
    let acceptor = MtlsAcceptor::from_pem(
        pki.service.chain.as_bytes(),
        pki.service.key.as_bytes(),
        pki.ca.as_bytes(),
    )?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // The gateway is this service's only client, and every one of its
    // connections comes from one address: a per-IP cap would let the
    // requests a few clients stall at the gateway (each holding a pooled
    // HTTP/1.1 connection) lock every other request out of the service.
    // The overall cap still holds.
    let serve = tls::serve(listener, acceptor, app);
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let serve = serve
        .max_connections_per_ip(tower_gateway::server::Limits::default().max_connections)
        .shutdown_timeout(std::time::Duration::ZERO)
        .with_graceful_shutdown(async {
            // A dropped handle is no request to stop.
            if killed.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
    let task = tokio::spawn(async move { serve.await });
    Ok(Instance { addr, kill, task })
}
