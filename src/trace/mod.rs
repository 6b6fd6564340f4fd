//! Tracing: a server span per request, the gateway's decisions on it, a
//! client span per upstream attempt, W3C trace context in and out, and a
//! request ID.
//!
//! The spans are plain [`tracing`] spans, so any subscriber sees them (a
//! log line carries `gateway.request_id`); with the `otel` feature and a
//! [`tracing-opentelemetry`](https://docs.rs/tracing-opentelemetry) layer
//! in your subscriber they become OpenTelemetry spans. The crate installs
//! no global tracer provider and no global propagator: the provider is
//! the one your subscriber's layer holds, and the W3C propagators are
//! used directly.
//!
//! # The server span
//!
//! [`TraceLayer`] opens one span per request, named `{method} {route
//! template}` (`GET /orders/{id}`, never the raw path), with the
//! OpenTelemetry HTTP semantic-convention attributes: `http.request.method`,
//! `http.route`, `http.response.status_code`, `client.address` (the client
//! behind trusted proxies, see [`client_addr`](crate::client_addr)),
//! `network.peer.address`, `network.protocol.version`,
//! `user_agent.original`, `http.request.body.size` and
//! `http.response.body.size` (from `Content-Length`, or an exact body
//! size), and `otel.status_code = error` for 5xx. `enduser.id` (the
//! token's subject) only with [`TraceLayer::record_consumer`].
//!
//! Each layer records its decision on the span it runs in (with
//! `tracing::Span::current().record`, a no-op on a span without the field,
//! so the layers need no `TraceLayer`):
//!
//! | field | recorded by | values |
//! | --- | --- | --- |
//! | `gateway.request_id` | [`RequestIdLayer`] | the request ID |
//! | `gateway.auth.result`, `gateway.auth.reason` | `JwtAuthLayer` | `authenticated`, `anonymous`, `skipped`, `rejected`; the reason of a refusal (`expired`, `invalid_signature`, ...) |
//! | `gateway.rbac.rule`, `gateway.rbac.outcome` | `RbacLayer` | the deciding rule; `allowed`, `denied`, `shadow_denied` |
//! | `gateway.ratelimit.decision`, `.window`, `.fallback` | `RateLimitLayer`, `RouteRateLimitLayer` | `allowed`, `limited`, `failed_open`, `failed_closed`; the deciding window's name; `true` when the local limiter stood in for the backend |
//! | `gateway.circuit.state` | `CircuitBreakerLayer`, the proxy | `closed`, `half_open`, `open` (the state a request met) |
//! | `gateway.rejection` | [`TraceLayer`] | the code of a refusal (`rate_limited`, ...) |
//!
//! # Client spans
//!
//! The [`Proxy`](crate::proxy::Proxy) opens a client span per upstream
//! attempt, a child of the current span: `server.address`, `server.port`,
//! `http.request.resend_count` (on retries, from 1), `gateway.upstream`,
//! `gateway.endpoint`, the endpoint's `gateway.circuit.state`, and the
//! outcome — `http.response.status_code`, or `error.type` (`connect`,
//! `upstream`, `client_body`). With the `otel` feature, the attempt's W3C
//! context is injected into the upstream request (`traceparent`,
//! `tracestate`, and baggage when the context carries any), so the service
//! continues the trace under that attempt.
//!
//! # Trace context from clients
//!
//! [`ClientContext`] decides what a client's `traceparent` and
//! `tracestate` are worth: [`ClientContext::Restart`] (the default) starts
//! a new trace for each request, links the client's context, and removes
//! its trace headers from the request; [`ClientContext::Trust`] continues
//! the client's trace. `baggage` is read only when asked for
//! ([`TraceLayer::baggage`], feature `otel`), from trusted clients.
//!
//! # The request ID
//!
//! [`RequestIdLayer`] gives every request an ID: the client's
//! `x-request-id` when [trusted](RequestIdLayer::trust_incoming) and valid,
//! generated otherwise. It is sent upstream, returned to the client, put on
//! the span, and added to problem+json refusals as `request_id`.
//!
//! # Where the layers go
//!
//! `RequestIdLayer` outermost (before any layer that can refuse, so every
//! refusal carries the ID), then `ClientAddrLayer` if you use one, then
//! `RouteLayer`, then `TraceLayer` right after it (it reads the matched
//! route for the span's name), then the deciding layers and the proxy.
//! Requests `RouteLayer` refuses (404, 405) get no server span.
//!
//! # Cost
//!
//! With no subscriber interested in the span (no subscriber, or one whose
//! filter leaves out `tower_gateway::trace` at `INFO`), a request pays the
//! span call sites' cached interest checks and the request ID; fields are
//! not even formatted. A span that a subscriber records costs what that
//! subscriber costs.
//!
//! # Example
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::route::{Route, RouteLayer, Routes};
//! use tower_gateway::trace::{ClientContext, RequestIdLayer, TraceLayer};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let routes = Routes::builder().route(Route::prefix("/orders")).build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .layer(RouteLayer::new(&routes))
//!     .layer(TraceLayer::new().client_context(ClientContext::Restart))
//!     .service_fn(|req: http::Request<String>| async move {
//!         // The upstream would get the same ID.
//!         assert!(req.headers().contains_key("x-request-id"));
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! let reply = svc.oneshot(http::Request::get("/orders/7").body(String::new())?).await?;
//! assert_eq!(reply.headers()["x-request-id"].len(), 32);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! With the `otel` feature, the spans become OpenTelemetry spans through a
//! subscriber of yours:
//!
//! ```
//! # #[cfg(feature = "otel")] {
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! // Give the builder your exporter (OTLP, say).
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("gateway")));
//! tracing::subscriber::set_global_default(subscriber)?;
//! # }
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod layer;
#[cfg(feature = "otel")]
mod propagation;
mod request_id;

pub use layer::{ClientContext, TraceFuture, TraceLayer, TraceService};
#[cfg(feature = "otel")]
pub(crate) use propagation::inject;
pub use request_id::{
    MAX_REQUEST_ID_LEN, REQUEST_ID, RequestId, RequestIdFuture, RequestIdLayer, RequestIdService,
};
