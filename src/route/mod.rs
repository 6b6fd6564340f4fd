//! Routes: each declared once, each request matched once.
//!
//! A [`Route`] is the unit a gateway is made of. It says which requests it
//! takes — an optional host, a path prefix matched on whole segments, the
//! methods — and carries the settings of every layer that acts on it: its
//! upstream, its authentication mode, its role rules per method, its rate
//! limits, its timeout and retry policy. Each layer adds its own settings
//! to `Route` from its own module (`Route::upstream` in [`proxy`],
//! `Route::auth` in [`auth`], `Route::roles` in [`rbac`],
//! `Route::rate_limit` in [`ratelimit`]) and reads them back from the
//! matched route; nothing here knows about any of them.
//!
//! [`RouteLayer`] matches each request against [`Routes`] once, early in
//! the stack: it normalizes the path ([`crate::path`]), picks the most
//! specific route, and records it as a [`MatchedRoute`] in the request
//! extensions — one shared value every later layer reads. Requests no route
//! takes are refused there, in one place: 404, 405 with `Allow`, or 400 for
//! a path that cannot be normalized.
//!
//! Layers used without routes (in an axum app, say) keep working with their
//! own settings: a route's settings apply only to the requests it matched.
//!
//! [`proxy`]: crate::proxy
//! [`auth`]: crate::auth
//! [`rbac`]: crate::rbac
//! [`ratelimit`]: crate::ratelimit
//!
//! # Example
//!
//! ```
//! use http::{Method, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::route::{MatchedRoute, Route, RouteLayer, Routes};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let routes = Routes::builder()
//!     .route(Route::prefix("/orders").methods([Method::GET, Method::POST]))
//!     .route(Route::prefix("/public").name("public"))
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(RouteLayer::new(&routes))
//!     .service_fn(|req: http::Request<()>| async move {
//!         let route = req.extensions().get::<MatchedRoute>().unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(route.template().as_str().to_owned()))
//!     });
//! let reply = svc.clone().oneshot(http::Request::get("/orders/7").body(())?).await?;
//! assert_eq!(reply.into_body(), "/orders");
//! let reply = svc.clone().oneshot(http::Request::delete("/orders/7").body(())?).await?;
//! assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
//! let reply = svc.oneshot(http::Request::get("/ordersX").body(())?).await?;
//! assert_eq!(reply.status(), StatusCode::NOT_FOUND);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod layer;
mod table;
mod template;

pub use layer::{RouteLayer, RouteService};
pub use table::{MatchedRoute, Route, RouteError, Routes, RoutesBuilder};
pub use template::RouteTemplate;
