use std::task::{Context, Poll};

use http::{Request, Response, Uri, uri::PathAndQuery};
use tower_layer::Layer;
use tower_service::Service;

use super::{NormalizedPath, PathError, is_double_encoded, normalize_cow};
use crate::reject::{Rejection, RequestHead, ResponseFuture};

/// Normalizes request paths once, at the edge (see the [module
/// documentation](super)).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::path::NormalizePathLayer;
///
/// let svc = ServiceBuilder::new()
///     .layer(NormalizePathLayer::new())
///     .service_fn(|req: http::Request<String>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().path().to_owned()))
///     });
/// ```
#[derive(Debug, Clone, Default)]
pub struct NormalizePathLayer {
    reject_double_encoding: bool,
}

impl NormalizePathLayer {
    /// A layer that normalizes, refusing only what cannot be normalized.
    pub fn new() -> Self {
        Self::default()
    }

    /// Strict mode: refuses paths with `%25` followed by two hex digits
    /// (`/public/%252e%252e/orders`) with 400
    /// ([`PathError::DoubleEncoding`]). Off by default.
    ///
    /// For upstreams that percent-decode twice. The price: RFC 3986 §2.4
    /// makes `%25` a literal `%`, so a legitimate path carrying `%` before
    /// two hex digits (`/search/100%2541`) is refused too. See the [module
    /// documentation](super).
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_gateway::path::NormalizePathLayer;
    ///
    /// let svc = ServiceBuilder::new()
    ///     .layer(NormalizePathLayer::new().reject_double_encoding(true))
    ///     .service_fn(|req: http::Request<String>| async move {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().path().to_owned()))
    ///     });
    /// ```
    pub fn reject_double_encoding(mut self, yes: bool) -> Self {
        self.reject_double_encoding = yes;
        self
    }
}

impl<S> Layer<S> for NormalizePathLayer {
    type Service = NormalizePath<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NormalizePath {
            inner,
            reject_double_encoding: self.reject_double_encoding,
        }
    }
}

/// The service of [`NormalizePathLayer`].
#[derive(Debug, Clone)]
pub struct NormalizePath<S> {
    inner: S,
    reject_double_encoding: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for NormalizePath<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let checked = apply(&mut request).and_then(|path| {
            if self.reject_double_encoding && is_double_encoded(path.as_str()) {
                Err(PathError::DoubleEncoding)
            } else {
                Ok(path)
            }
        });
        match checked {
            Ok(_) => ResponseFuture::inner(self.inner.call(request)),
            Err(error) => {
                let rejection = path_rejection(error);
                ResponseFuture::rejected(rejection.into_response(&RequestHead::of(&request)))
            }
        }
    }
}

/// The 400 rejection for a refused path.
pub(crate) fn path_rejection(error: PathError) -> Rejection {
    Rejection::bad_request("invalid_path", error.to_string())
}

/// Normalizes the request's path unless a [`NormalizedPath`] equal to the
/// current path is already in its extensions: rewrites the URI when the path
/// changed and records the result. Returns the normalized path.
pub(crate) fn apply<B>(request: &mut Request<B>) -> Result<NormalizedPath, PathError> {
    // Reuse what an earlier layer recorded only while the URI still carries
    // that path. A layer in between may have rewritten it (axum's `nest`
    // strips its prefix, a rewrite layer maps `/api/orders` to `/orders`);
    // deciding on the stale path would authorize a path other than the one
    // the upstream receives.
    if let Some(done) = request.extensions().get::<NormalizedPath>()
        && done.as_str() == request.uri().path()
    {
        return Ok(done.clone());
    }
    let normalized = match normalize_cow(request.uri().path())? {
        std::borrow::Cow::Borrowed(same) => NormalizedPath(same.into()),
        std::borrow::Cow::Owned(changed) => {
            let normalized = NormalizedPath(changed.into());
            rewrite_path(request.uri_mut(), &normalized);
            normalized
        }
    };
    request.extensions_mut().insert(normalized.clone());
    Ok(normalized)
}

pub(crate) fn rewrite_path(uri: &mut Uri, path: &NormalizedPath) {
    let path_and_query = match uri.query() {
        Some(query) => format!("{}?{}", path.as_str(), query),
        None => path.as_str().to_owned(),
    };
    // The normalized path only holds characters that were valid in the
    // original path, so this parse cannot fail; if it somehow did, the
    // original URI is kept and the request still carries the normalized path
    // in its extensions.
    let Ok(pq) = PathAndQuery::try_from(path_and_query) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(rebuilt) = Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    async fn status(layer: NormalizePathLayer, path: &str) -> (StatusCode, String) {
        let svc = ServiceBuilder::new()
            .layer(crate::reject::RenderLayer::new())
            .layer(layer)
            .service_fn(|req: Request<String>| async move {
                Ok::<_, Infallible>(Response::new(req.uri().path().to_owned()))
            });
        let request = Request::builder().uri(path).body(String::new()).unwrap();
        let response = svc.oneshot(request).await.unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn strict_mode_refuses_double_encoding_with_400() {
        let strict = NormalizePathLayer::new().reject_double_encoding(true);
        for path in [
            "/public/%252e%252e/orders",
            "/public/%252E%252E/orders",
            "/a/%25%32%65%25%32%65/b",
            "/a/%2541",
        ] {
            let (code, body) = status(strict.clone(), path).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(body.contains("invalid_path"), "{path}: {body}");
        }
        // Legitimate neighbours pass, normalized.
        for (path, upstream) in [
            ("/public/%2e%2e/orders", "/orders"),
            ("/a/%25", "/a/%25"),
            ("/a/50%25off", "/a/50%25off"),
        ] {
            assert_eq!(
                status(strict.clone(), path).await,
                (StatusCode::OK, upstream.to_owned()),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn double_encoding_passes_by_default_as_data() {
        let (code, body) = status(NormalizePathLayer::new(), "/public/%252e%252e/orders").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "/public/%252e%252e/orders");
    }
}
