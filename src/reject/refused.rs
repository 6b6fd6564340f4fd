use http::{HeaderMap, Method, Response, Uri};

use super::{Rejection, RequestHead};

/// A refusal on its way out to the render step: the typed rejection and the
/// parts of the request head a renderer may look at.
///
/// It rides in the response's extensions from the layer that refused to the
/// one place that renders ([`super::RenderLayer`], or `server::serve`). The
/// head is copied only here, on the refusal path, so a request that is served
/// costs nothing.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub(crate) rejection: Rejection,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
}

impl Refused {
    pub(crate) fn head(&self) -> RequestHead<'_> {
        RequestHead::new(&self.method, &self.uri, &self.headers)
    }
}

impl Rejection {
    /// The response a layer answers a refused request with: the rejection's
    /// status and headers (`WWW-Authenticate`, `Retry-After`, `Allow`, ...),
    /// an empty body, and the rejection itself in the response's extensions.
    ///
    /// The body is filled in once, by the render step at the edge of the
    /// stack ([`RenderLayer`](super::RenderLayer), or `server::serve`), with
    /// the stack's one [`Renderer`](super::Renderer). A stack without a
    /// render step still answers with the right status and headers.
    ///
    /// Because the refusal has the inner service's body type `B`, a layer's
    /// response type is its inner service's, and any layer can be left out
    /// with `option_layer`.
    ///
    /// ```
    /// use http::{Method, StatusCode, Uri, HeaderMap};
    /// use tower_gateway::reject::{self, Rejection, RequestHead};
    ///
    /// let (method, uri, headers) = (Method::GET, Uri::from_static("/orders"), HeaderMap::new());
    /// let head = RequestHead::new(&method, &uri, &headers);
    /// let response: http::Response<String> = Rejection::forbidden("role missing").into_response(&head);
    /// assert_eq!(response.status(), StatusCode::FORBIDDEN);
    /// assert_eq!(reject::rejection(&response).map(|r| r.code()), Some("insufficient_role"));
    /// ```
    pub fn into_response<B: Default>(self, request: &RequestHead<'_>) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = self.status();
        for (name, value) in self.headers() {
            response.headers_mut().append(name, value.clone());
        }
        response.extensions_mut().insert(Refused {
            rejection: self,
            method: request.method.clone(),
            uri: request.uri.clone(),
            headers: request.headers.clone(),
        });
        response
    }
}

/// The rejection a response carries, if a layer refused the request and the
/// response has not been rendered yet.
///
/// Outer layers read the reason here (for example to count refusals by
/// code) without parsing bodies.
pub fn rejection<B>(response: &Response<B>) -> Option<&Rejection> {
    response.extensions().get::<Refused>().map(|r| &r.rejection)
}
