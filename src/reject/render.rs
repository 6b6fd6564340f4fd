use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, Uri};

use super::{ProblemJson, Rejection};

/// What a renderer may look at of the refused request.
///
/// Only the request head: a rejection is rendered before (and instead of) the
/// body being read.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// Borrows the parts of a request head.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            uri,
            headers,
        }
    }

    /// Borrows the head of a request.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        Self::new(request.method(), request.uri(), request.headers())
    }
}

/// Turns a [`Rejection`] into a response.
///
/// Implement this to give rejections your own shape; pass it to any layer's
/// `renderer(...)` option. Keep the status and the headers of the rejection
/// (`WWW-Authenticate`, `Retry-After`, ...): clients and RFCs rely on them.
pub trait RenderRejection: Send + Sync + 'static {
    /// Renders the rejection of the request whose head is given.
    fn render(&self, rejection: &Rejection, request: &RequestHead<'_>) -> Response<Bytes>;
}

/// A shared, cloneable handle to a [`RenderRejection`]; defaults to
/// [`ProblemJson`].
#[derive(Clone)]
pub struct Renderer(Arc<dyn RenderRejection>);

impl Renderer {
    /// Wraps a renderer.
    pub fn new(renderer: impl RenderRejection) -> Self {
        Self(Arc::new(renderer))
    }

    /// Renders a rejection with the wrapped renderer.
    pub fn render(&self, rejection: &Rejection, request: &RequestHead<'_>) -> Response<Bytes> {
        self.0.render(rejection, request)
    }

    /// Renders a rejection as a response with a [`super::ResponseBody`].
    pub(crate) fn respond<B>(
        &self,
        rejection: &Rejection,
        request: &RequestHead<'_>,
    ) -> Response<super::ResponseBody<B>> {
        self.render(rejection, request)
            .map(super::ResponseBody::rejection)
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(ProblemJson)
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Renderer(..)")
    }
}
