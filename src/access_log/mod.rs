//! A structured access log: one `tracing` event per request.
//!
//! [`AccessLogLayer`] emits one event at target [`TARGET`]
//! (`tower_gateway::access`), level `INFO`, when the response body has been
//! sent to its end — or with the response head, when the body is empty (a
//! refusal, a `204`), since an empty body is never polled. Duration and
//! byte count then cover the whole exchange, not only the time to the head.
//! Subscribers add the time; a JSON formatter
//! (`tracing_subscriber::fmt().json()`) makes it one JSON line per request.
//!
//! | field | value |
//! | --- | --- |
//! | `route` | the route template ([`MatchedRoute`](crate::route::MatchedRoute) or [`RouteTemplate`](crate::route::RouteTemplate)), never the raw path; absent when no route matched |
//! | `method` | the request method |
//! | `status` | the response status; absent when the service failed without one |
//! | `duration_ms` | from the request reaching the layer to the end of the response body |
//! | `request_bytes` | the declared request body size (`Content-Length` or an exact size hint); absent for a body of unknown length |
//! | `response_bytes` | response body bytes sent through the layer (a refusal's problem document is filled in later, by the render step, and counts as 0) |
//! | `consumer` | the verified [`Identity`](crate::Identity)'s subject, only with [`AccessLogLayer::record_consumer`] |
//! | `upstream`, `attempts` | the endpoint that answered and the attempts made, from an [`UpstreamCall`] in the response extensions |
//! | `refused` | the [`Rejection`](crate::reject::Rejection) code when a layer refused the request |
//! | `outcome` | `complete`, `body_error`, `aborted` (the response was dropped before its end: the client left) or `service_error` |
//! | `trace_id` | with feature `otel`: the OpenTelemetry trace ID of the request's span, sampled or not |
//!
//! The event is a child of the span the request was called in (the server
//! span, with tracing on), so a subscriber shows that span's fields with it.
//!
//! The log is off unless you add the layer, and costs one
//! `tracing::enabled!` check per request when no subscriber wants the
//! target. Building an entry allocates nothing: every value is a shared
//! `Arc` or a number.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::access_log::AccessLogLayer;
//! use tower_gateway::route::{Route, RouteLayer, Routes};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Access log lines only, as JSON: `RUST_LOG=tower_gateway::access=info`.
//! let subscriber = tracing_subscriber::fmt()
//!     .with_env_filter("tower_gateway::access=info")
//!     .json()
//!     .finish();
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! let routes = Routes::builder().route(Route::prefix("/orders")).build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(RouteLayer::new(&routes))
//!     .layer(AccessLogLayer::new())
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("[]")))
//!     });
//! let response = svc.oneshot(Request::get("/orders/7").body(String::new())?).await?;
//! // The line is written when the body has been sent (or dropped).
//! drop(response);
//! # Ok(()) }
//! ```

mod body;
mod entry;
mod future;
mod layer;
#[cfg(feature = "otel")]
pub(crate) mod trace_id;
mod upstream;

pub use body::AccessLogBody;
pub use future::ResponseFuture;
pub use layer::{AccessLog, AccessLogLayer, TARGET};
pub use upstream::UpstreamCall;
