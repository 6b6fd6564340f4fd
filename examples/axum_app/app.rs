//! An ordinary axum app — its own `Router`, handlers, state and extractors —
//! with the crate's layers added where axum puts middleware:
//!
//! | route | who | limit per consumer (token `sub`) |
//! | --- | --- | --- |
//! | `GET /health` | anyone, no token | none |
//! | `GET /orders` | `admin` | 60/min for the whole API |
//! | `POST /orders` | `user` (and `admin`, by hierarchy) | 60/min, and 3/min for writes |
//! | `GET /orders/{id}` | `user`, own orders (`admin`: any) | 60/min |
//! | `DELETE /orders/{id}` | `admin` | 60/min |
//!
//! axum keeps its routing: authentication and the per-consumer limit wrap
//! the API routes with `route_layer` (so an unknown path stays a plain 404,
//! not a 401), each handler carries its own role check with
//! `Handler::layer`, and one `RenderLayer` around the whole router renders
//! every refusal once (401 with an RFC 6750 challenge, 403, 429 with
//! `Retry-After`, as RFC 9457 problem JSON).
//!
//! `tests/examples_to_copy.rs` serves this router on a loopback port and
//! drives it over real sockets.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    handler::Handler,
    http::StatusCode,
    routing::get,
};
use serde::{Deserialize, Serialize};
use tower::{BoxError, ServiceBuilder};
use tower_gateway::{
    Identity,
    auth::{Issuer, JwtAuthLayer, JwtKey},
    ratelimit::{Consumer, Limit, RateLimitLayer},
    rbac::{RbacLayer, RoleHierarchy},
    reject::RenderLayer,
};

/// The `iss` the app accepts.
pub const ISSUER: &str = "https://auth.orders.example";
/// The `aud` the app accepts.
pub const AUDIENCE: &str = "orders-api";
/// Calls per minute per consumer, all API routes together.
pub const CALLS_PER_MINUTE: u32 = 60;
/// Orders a consumer may place per minute.
pub const WRITES_PER_MINUTE: u32 = 3;

/// An order, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// Its number.
    pub id: u64,
    /// What was ordered.
    pub item: String,
    /// The subject of the token that placed it.
    pub owner: String,
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    /// What to order.
    pub item: String,
}

/// The orders placed so far (the app's own state; a database in real life).
#[derive(Debug, Clone, Default)]
pub struct Orders(Arc<Mutex<BTreeMap<u64, Order>>>);

impl Orders {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<u64, Order>) -> T) -> T {
        // A handler that panicked mid-update leaves a map that is still a
        // valid map: keep serving rather than poisoning every later call.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The app: tokens signed with `secret` (HS256) by [`ISSUER`] for
/// [`AUDIENCE`].
pub fn app(secret: &[u8]) -> Result<Router, BoxError> {
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::hmac(secret)),
        )
        .build()?;
    // Keyed by the verified token's subject, so it sits inside `auth`.
    let calls = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_minute(CALLS_PER_MINUTE))
        .build()?;
    let writes = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_minute(WRITES_PER_MINUTE))
        .scope("orders-writes")
        .build()?;
    let hierarchy = RoleHierarchy::new().inherit("admin", ["user"]);
    let user = RbacLayer::require_any(["user"]).hierarchy(hierarchy);
    let admin = RbacLayer::require_any(["admin"]);

    // Inside `route_layer`, per request: auth → calls limit → the
    // handler's own role check (→ the writes limit) → the handler. A call
    // refused with 403 has still counted against its consumer's limit.
    let api = Router::new()
        .route(
            "/orders",
            get(list_orders.layer(admin.clone()))
                .post(place_order.layer(ServiceBuilder::new().layer(user.clone()).layer(writes))),
        )
        .route(
            "/orders/{id}",
            get(show_order.layer(user)).delete(cancel_order.layer(admin)),
        )
        .route_layer(ServiceBuilder::new().layer(auth).layer(calls));

    Ok(Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(api)
        .with_state(Orders::default())
        // Outermost: every refusal above is rendered here, once.
        .layer(RenderLayer::new()))
}

/// The caller's subject. The auth layer admits no token without one
/// (`sub` is how the limit keys a consumer), so "-" is never shown.
fn subject(identity: &Identity) -> String {
    identity.subject().unwrap_or("-").to_owned()
}

async fn list_orders(State(orders): State<Orders>) -> Json<Vec<Order>> {
    Json(orders.with(|orders| orders.values().cloned().collect()))
}

async fn place_order(
    State(orders): State<Orders>,
    Extension(identity): Extension<Identity>,
    Json(new): Json<NewOrder>,
) -> (StatusCode, Json<Order>) {
    let order = orders.with(|orders| {
        let id = orders.keys().next_back().map_or(1, |last| last + 1);
        let order = Order {
            id,
            item: new.item,
            owner: subject(&identity),
        };
        orders.insert(id, order.clone());
        order
    });
    (StatusCode::CREATED, Json(order))
}

async fn show_order(
    State(orders): State<Orders>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<u64>,
) -> Result<Json<Order>, StatusCode> {
    let order = orders.with(|orders| orders.get(&id).cloned());
    match order {
        // A user sees their own orders; another's is as good as absent.
        Some(order)
            if identity.has_role("admin") || Some(order.owner.as_str()) == identity.subject() =>
        {
            Ok(Json(order))
        }
        _ => Err(StatusCode::NOT_FOUND),
    }
}

async fn cancel_order(State(orders): State<Orders>, Path(id): Path<u64>) -> StatusCode {
    match orders.with(|orders| orders.remove(&id)) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}
