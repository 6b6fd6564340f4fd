//! A tonic gRPC server with the crate's layers: `orders.v1.Orders` (written
//! by hand below, as `tonic-build` would generate it from this proto, so
//! the example needs no protoc) and the standard `grpc.health.v1.Health`.
//!
//! ```proto
//! syntax = "proto3";
//! package orders.v1;
//! service Orders {
//!   rpc GetOrder(GetOrderRequest) returns (Order);             // role `user` (or `admin`)
//!   rpc CancelOrder(CancelOrderRequest) returns (CancelOrderReply); // role `admin`
//! }
//! message GetOrderRequest { uint64 id = 1; }
//! message Order { uint64 id = 1; string item = 2; string owner = 3; }
//! message CancelOrderRequest { uint64 id = 1; }
//! message CancelOrderReply { bool cancelled = 1; }
//! ```
//!
//! The layers sit on tonic's own `Server::builder().layer(...)`, and speak
//! gRPC back: a call without a token ends with `UNAUTHENTICATED` (and a
//! `www-authenticate: Bearer` challenge in its metadata), a call without
//! the role with `PERMISSION_DENIED`, a consumer over its limit with
//! `RESOURCE_EXHAUSTED` (and `retry-after`) — each a trailers-only
//! response, rendered once by `RenderLayer`, which answers gRPC callers
//! (`content-type: application/grpc`) in gRPC. The health service is public,
//! for load balancers and Kubernetes probes.
//!
//! `tests/examples_to_copy.rs` serves it on a loopback port and calls it
//! with a tonic client.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use tokio::net::TcpListener;
use tonic::{
    Status,
    body::Body,
    server::{Grpc, NamedService},
    transport::server::TcpIncoming,
};
use tonic_prost::ProstCodec;
use tower::{BoxError, Service, ServiceBuilder, service_fn};
use tower_gateway::{
    Identity,
    auth::{Issuer, JwtAuthLayer, JwtKey},
    ratelimit::{Consumer, Limit, MissingKey, RateLimitLayer},
    rbac::{Policy, RbacLayer, RoleHierarchy, Rule},
    reject::RenderLayer,
};

/// The `iss` the service accepts.
pub const ISSUER: &str = "https://auth.orders.example";
/// The `aud` the service accepts.
pub const AUDIENCE: &str = "orders-grpc";
/// Calls per minute per consumer (the token's `sub`).
pub const CALLS_PER_MINUTE: u32 = 5;

/// The gRPC service name.
pub const SERVICE: &str = "orders.v1.Orders";
/// The path of `GetOrder`.
pub const GET_ORDER: &str = "/orders.v1.Orders/GetOrder";
/// The path of `CancelOrder`.
pub const CANCEL_ORDER: &str = "/orders.v1.Orders/CancelOrder";

/// `GetOrder`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOrderRequest {
    /// The order's number.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// An order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Order {
    /// Its number.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// What was ordered.
    #[prost(string, tag = "2")]
    pub item: String,
    /// Who asked for it: the verified token's subject.
    #[prost(string, tag = "3")]
    pub owner: String,
}

/// `CancelOrder`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelOrderRequest {
    /// The order's number.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// `CancelOrder`'s reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelOrderReply {
    /// Whether the order was cancelled.
    #[prost(bool, tag = "1")]
    pub cancelled: bool,
}

/// Serves the orders and health services on `listener`, for tokens signed
/// with `secret` (HS256).
pub async fn serve(listener: TcpListener, secret: &[u8]) -> Result<(), BoxError> {
    let auth = JwtAuthLayer::builder()
        .issuer(
            Issuer::new(ISSUER)
                .audience(AUDIENCE)
                .key(JwtKey::hmac(secret)),
        )
        // No token: anonymous, and the policy decides (the health service
        // is public; everything else answers UNAUTHENTICATED). A token that
        // is present is always checked.
        .allow_anonymous(true)
        .build()?;
    // gRPC methods are HTTP/2 POSTs to `/package.Service/Method`: the
    // policy's rules are written on those paths.
    let policy = Policy::builder()
        .rule(Rule::new("/grpc.health.v1.Health").public())
        .rule(
            Rule::exact(GET_ORDER)
                .methods([Method::POST])
                .any_of(["user"]),
        )
        .rule(
            Rule::exact(CANCEL_ORDER)
                .methods([Method::POST])
                .any_of(["admin"]),
        )
        .deny_unmatched(true)
        .build()?;
    let rbac = RbacLayer::new(policy).hierarchy(RoleHierarchy::new().inherit("admin", ["user"]));
    let calls = RateLimitLayer::builder()
        .key(Consumer::subject())
        .limit(Limit::new().per_minute(CALLS_PER_MINUTE))
        // Only public health checks get here without an identity (RBAC
        // refused the rest): they are not limited.
        .on_missing_key(MissingKey::Allow)
        .build()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrdersServer>().await;

    tonic::transport::Server::builder()
        .layer(
            ServiceBuilder::new()
                .layer(RenderLayer::new()) // refusals as grpc-status, once
                .layer(auth)
                .layer(rbac)
                .layer(calls),
        )
        .add_service(health_service)
        .add_service(OrdersServer)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await?;
    Ok(())
}

async fn get_order(
    request: tonic::Request<GetOrderRequest>,
) -> Result<tonic::Response<Order>, Status> {
    // Put there by the auth layer; RBAC let no call without it reach here.
    let owner = request
        .extensions()
        .get::<Identity>()
        .and_then(Identity::subject)
        .unwrap_or_default()
        .to_owned();
    let id = request.into_inner().id;
    if id == 0 {
        return Err(Status::not_found("no order 0"));
    }
    Ok(tonic::Response::new(Order {
        id,
        item: "tea".to_owned(),
        owner,
    }))
}

async fn cancel_order(
    request: tonic::Request<CancelOrderRequest>,
) -> Result<tonic::Response<CancelOrderReply>, Status> {
    let cancelled = request.into_inner().id != 0;
    Ok(tonic::Response::new(CancelOrderReply { cancelled }))
}

/// `orders.v1.Orders` as a service tonic can route to: what `tonic-build`
/// generates, cut down to two unary methods.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersServer;

impl NamedService for OrdersServer {
    const NAME: &'static str = SERVICE;
}

type GrpcFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for OrdersServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GrpcFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> GrpcFuture {
        match request.uri().path() {
            GET_ORDER => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(service_fn(get_order), request).await)
            }),
            CANCEL_ORDER => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(service_fn(cancel_order), request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}
