//! One rejection model for every layer.
//!
//! Layers never fail a request through `Service::Error`: a request that is
//! refused becomes an HTTP response, so the layers stack under axum (which
//! needs `Infallible` errors), tonic and plain hyper alike.
//!
//! A layer describes *why* it refuses with a [`Rejection`]; a
//! [`RenderRejection`] turns that into a response. The default renderer,
//! [`ProblemJson`], answers HTTP clients with an RFC 9457 problem document
//! (`application/problem+json`) and gRPC clients (`content-type:
//! application/grpc*`) with a trailers-only response carrying the matching
//! `grpc-status` and `grpc-message`.
//!
//! # Refused once, rendered once
//!
//! A layer that refuses answers with
//! [`Rejection::into_response`]: the status and headers the rejection calls
//! for, an empty body of the inner service's own body type, and the typed
//! rejection in the response's extensions. One render step per stack, at its
//! edge, turns it into the body the client sees: [`RenderLayer`], or
//! `server::serve`, which has the step built in. So:
//!
//! - a layer's response type is its inner service's (`B: Default`, which
//!   axum, tonic and `http-body-util` bodies and the proxy's body are): the
//!   body type does not grow with each layer, and any layer can be left out
//!   with `option_layer`;
//! - the renderer is chosen once for the whole stack;
//! - layers outside the refusing one read the reason with [`rejection`]
//!   (or [`Rendered`] after the render step), never by parsing a body.
//!
//! The render step answers with [`ResponseBody<B>`]: the inner body,
//! untouched, or the rendered bytes.

//! # Replacing the rendering
//!
//! ```
//! use bytes::Bytes;
//! use http::{Response, StatusCode};
//! use tower_gateway::reject::{RenderRejection, Rejection, RequestHead};
//!
//! /// Renders every rejection as `{"error": "<code>"}`.
//! struct MyJson;
//!
//! impl RenderRejection for MyJson {
//!     fn render(&self, rejection: &Rejection, _request: &RequestHead<'_>) -> Response<Bytes> {
//!         let body = format!(r#"{{"error":"{}"}}"#, rejection.code());
//!         let mut response = Response::new(Bytes::from(body));
//!         *response.status_mut() = rejection.status();
//!         // Keep the headers the rejection asks for (WWW-Authenticate, Retry-After, ...).
//!         response.headers_mut().extend(rejection.headers().clone());
//!         response
//!     }
//! }
//!
//! let rejection = Rejection::forbidden("role missing");
//! let uri: http::Uri = "/x".parse().unwrap();
//! let headers = http::HeaderMap::new();
//! let head = RequestHead::new(&http::Method::GET, &uri, &headers);
//! let response = MyJson.render(&rejection, &head);
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! ```

mod body;
mod future;
mod grpc;
mod layer;
mod problem;
mod refused;
mod rejection;
mod render;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use grpc::{GrpcCode, is_grpc_request};
pub use layer::{Render, RenderFuture, RenderLayer};
pub use problem::ProblemJson;
pub use refused::rejection;
pub use rejection::{Rejection, RejectionKind};
pub use render::{RenderRejection, Rendered, Renderer, RequestHead};
