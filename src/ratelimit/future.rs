//! The response future of [`RateLimit`](super::RateLimit).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    Decision,
    headers::HeaderList,
    layer::{Settled, Shared},
};
use crate::{reject::RequestHead, route::RouteTemplate};

#[cfg(feature = "redis")]
type BackendError = super::BackendError;
#[cfg(not(feature = "redis"))]
type BackendError = std::convert::Infallible;

/// A decision under way (a Redis round trip). Boxed: it is the network
/// path, where one allocation is lost in the noise.
pub(crate) type Decide = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// What a request waiting for its decision keeps.
pub(crate) struct Pending<S, ReqBody> {
    /// The inner service, polled ready before the decision started.
    pub(crate) inner: S,
    pub(crate) request: Request<ReqBody>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tier: usize,
    pub(crate) key: String,
}

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): waits for the
    /// decision when it needs a round trip, then calls the inner service and
    /// adds the quota headers to its response, or answers with the refusal.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding { decide: Decide, pending: Option<Pending<S, ReqBody>> },
        Calling { #[pin] future: S::Future, headers: HeaderList },
        Done { response: Option<Response<ResBody>> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Drives the inner call; `headers` go on its response.
    pub(crate) fn call(future: S::Future, headers: HeaderList) -> Self {
        Self {
            state: State::Calling { future, headers },
        }
    }

    /// Resolves at once to `response`.
    pub(crate) fn done(response: Response<ResBody>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    /// Waits for `decide`, then settles the request.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deciding(decide: Decide, pending: Pending<S, ReqBody>) -> Self {
        Self {
            state: State::Deciding {
                decide,
                pending: Some(pending),
            },
        }
    }
}

/// The route of the request, for the metrics (`unmatched` without one).
pub(crate) fn route_label<B>(request: &Request<B>) -> Option<&RouteTemplate> {
    let extensions = request.extensions();
    extensions
        .get::<crate::route::MatchedRoute>()
        .map(crate::route::MatchedRoute::template)
        .or_else(|| extensions.get::<RouteTemplate>())
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Deciding { decide, pending } => {
                    // A failed decision is `None`: the failure policy decides.
                    let decided = ready!(decide.as_mut().poll(cx)).ok();
                    // Taken once, just before the state moves on.
                    let Pending {
                        mut inner,
                        request,
                        shared,
                        tier,
                        key,
                    } = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let head = RequestHead::of(&request);
                    match shared.settle(tier, &key, decided, route_label(&request), &head) {
                        Settled::Admit(headers) => {
                            let future = inner.call(request);
                            this.state.set(State::Calling { future, headers });
                        }
                        Settled::Refuse(response) => {
                            this.state.set(State::Done { response: None });
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Calling { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    for (name, value) in headers.drain(..) {
                        response.headers_mut().insert(name, value);
                    }
                    return Poll::Ready(Ok(response));
                }
                // Polling again after completion is a contract violation by
                // the caller; answering with a pending future would hang it.
                StateProj::Done { response } => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
