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
//! # The body convention
//!
//! Layers are generic over the inner service's response body `B`. A layer that
//! may reject answers with [`ResponseBody<B>`]: either the inner body, passed
//! through untouched, or the bytes of a rendered rejection. `ResponseBody<B>`
//! implements [`http_body::Body`] whenever `B` does with `Data = Bytes`, which
//! is what axum, hyper and tonic bodies all are, so no body is buffered or
//! converted and no `Default`/`From` bound is put on `B`.
//!
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
mod problem;
mod rejection;
mod render;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use grpc::{GrpcCode, is_grpc_request};
pub use problem::ProblemJson;
pub use rejection::{Rejection, RejectionKind};
pub use render::{RenderRejection, Renderer, RequestHead};
