//! The service of [`RateLimitLayer`](super::RateLimitLayer).

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use super::{future::ResponseFuture, layer::Shared, step::Step};

/// Rate-limits requests before they reach the inner service; see
/// [`RateLimitLayer`](super::RateLimitLayer).
///
/// Readiness is the inner service's. A decision that needs a Redis round
/// trip moves the inner service that was polled ready into the response
/// future (leaving a clone in its place), so the service called is always
/// one that was polled ready.
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match Step::begin(&self.shared, &request) {
            Step::Skip => ResponseFuture::call(self.inner.call(request), Vec::new()),
            Step::Admit(headers) => ResponseFuture::call(self.inner.call(request), headers),
            Step::Refuse(response) => ResponseFuture::done(response),
            Step::Wait { decide, tier, key } => {
                // The decision completes later: take the inner service that
                // was polled ready along, leave a clone for the next
                // `poll_ready`.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(
                    decide,
                    super::future::Pending {
                        inner: ready,
                        request,
                        shared: self.shared.clone(),
                        tier,
                        key,
                    },
                )
            }
        }
    }
}
