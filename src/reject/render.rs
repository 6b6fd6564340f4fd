use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, Uri, header};

use super::{ProblemJson, Rejection, refused::Refused};

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
/// Implement this to give rejections your own shape; pass it, wrapped in a
/// [`Renderer`], to the stack's one render step
/// ([`RenderLayer::renderer`](super::RenderLayer::renderer) or
/// `server::serve(..).renderer(..)`). Keep the status and the headers of the rejection
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

    /// Renders the refusal a response carries, if any; any other response
    /// passes through with its body untouched.
    ///
    /// The rendered status and headers replace those the refusing layer set;
    /// headers other layers added on the way out (rate-limit headers,
    /// `Connection: close`) stay.
    pub fn render_response<B>(&self, response: Response<B>) -> Response<super::ResponseBody<B>> {
        if response.extensions().get::<Refused>().is_none() {
            return response.map(super::ResponseBody::inner);
        }
        let (mut parts, _empty) = response.into_parts();
        let Some(refused) = parts.extensions.remove::<Refused>() else {
            return Response::from_parts(parts, super::ResponseBody::rejection(Bytes::new()));
        };
        let (rendered, bytes) = self
            .render(&refused.rejection, &refused.head())
            .into_parts();
        parts.status = rendered.status;
        // The headers that described the empty body (a framework may have
        // added `content-length: 0` on the way out) describe nothing now.
        for name in [
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
        ] {
            parts.headers.remove(name);
        }
        let mut current = None;
        for (name, value) in rendered.headers {
            // The first value of each name replaces whatever the response
            // had under it; the others are appended.
            match name {
                Some(name) => {
                    parts.headers.insert(name.clone(), value);
                    current = Some(name);
                }
                None => {
                    if let Some(name) = &current {
                        parts.headers.append(name.clone(), value);
                    }
                }
            }
        }
        parts.extensions.insert(Rendered(refused.rejection));
        Response::from_parts(parts, super::ResponseBody::rejection(bytes))
    }
}

/// The rejection a rendered response was made from, kept in its extensions
/// for layers outside the render step (access logs, metrics by reason).
#[derive(Debug, Clone)]
pub struct Rendered(pub Rejection);

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
