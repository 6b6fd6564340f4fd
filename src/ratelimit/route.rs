//! What a route says about rate limits, and the layer that applies them.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{RateLimitLayer, headers::HeaderList, layer::Shared, step::Step};
use crate::route::{MatchedRoute, Route};

/// The rate limits of a route, in the order they were added.
#[derive(Clone, Default)]
pub(crate) struct RouteLimits(Vec<Arc<Shared>>);

/// Rate limiting's setting of a route.
impl Route {
    /// Limits the route's requests with `limit` — its key, its tiers, its
    /// backend (local or Redis) and failure policy — applied by a
    /// [`RouteRateLimitLayer`]. Call it again for more limits (per second
    /// and per hour, per consumer and per IP): a request must pass every one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_gateway::ratelimit::{Consumer, Limit, RateLimitLayer};
    /// use tower_gateway::route::Route;
    ///
    /// let per_consumer = RateLimitLayer::builder()
    ///     .key(Consumer::subject())
    ///     .limit(Limit::new().per_minute(60))
    ///     .tier("premium", Limit::new().per_minute(600))
    ///     .scope("payments")
    ///     .build()?;
    /// let payments = Route::prefix("/payments").rate_limit(&per_consumer);
    /// # Ok(()) }
    /// ```
    pub fn rate_limit(mut self, limit: &RateLimitLayer) -> Self {
        self.setting_or_default::<RouteLimits>()
            .0
            .push(limit.shared.clone());
        self
    }
}

/// Reading a route's rate limits back.
impl Route {
    /// The limits added with [`Route::rate_limit`], in order (each a cheap
    /// handle on the same shared state the route enforces).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_gateway::ratelimit::{Consumer, Limit, RateLimitLayer};
    /// use tower_gateway::route::Route;
    ///
    /// let limit = RateLimitLayer::builder()
    ///     .key(Consumer::subject())
    ///     .limit(Limit::new().per_minute(60))
    ///     .scope("orders")
    ///     .build()?;
    /// let route = Route::prefix("/orders").rate_limit(&limit);
    /// let scopes: Vec<String> = route.rate_limits().map(|l| l.scope().to_owned()).collect();
    /// assert_eq!(scopes, ["orders"]);
    /// # Ok(()) }
    /// ```
    pub fn rate_limits(&self) -> impl Iterator<Item = RateLimitLayer> + '_ {
        self.setting::<RouteLimits>()
            .into_iter()
            .flat_map(|limits| limits.0.iter())
            .map(|shared| RateLimitLayer {
                shared: shared.clone(),
            })
    }
}

/// Applies the rate limits of each request's matched route
/// ([`Route::rate_limit`]); requests whose route has none pass untouched.
///
/// The limits are checked in order and the first refusal answers (429 with
/// `Retry-After`; the quota headers of the last limit that admitted go on
/// a served response). A [`RateLimitLayer`] in the stack applies its own
/// limit to every request, whatever the route: use it for stack-wide
/// limits such as a per-IP flood guard.
#[derive(Debug, Clone, Default)]
pub struct RouteRateLimitLayer {
    _private: (),
}

impl RouteRateLimitLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RouteRateLimitLayer {
    type Service = RouteRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteRateLimit { inner }
    }
}

/// The service of [`RouteRateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RouteRateLimit<S> {
    inner: S,
}

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RouteRateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RouteRateLimitFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(route) = request
            .extensions()
            .get::<MatchedRoute>()
            .filter(|route| route.setting::<RouteLimits>().is_some())
            .cloned()
        else {
            return RouteRateLimitFuture::calling(self.inner.call(request), Vec::new());
        };
        let Some(RouteLimits(limits)) = route.setting::<RouteLimits>() else {
            return RouteRateLimitFuture::calling(self.inner.call(request), Vec::new());
        };
        let mut headers = Vec::new();
        for (index, shared) in limits.iter().enumerate() {
            match Step::begin(shared, &request) {
                Step::Skip => {}
                Step::Admit(admitted) => headers = admitted,
                Step::Refuse(response) => return RouteRateLimitFuture::done(response),
                Step::Wait { decide, tier, key } => {
                    // A round trip: finish the remaining limits in a boxed
                    // future (the network path), with the inner service
                    // that was polled ready; a clone stays for the next
                    // `poll_ready`.
                    let clone = self.inner.clone();
                    let mut inner = std::mem::replace(&mut self.inner, clone);
                    let rest: Vec<Arc<Shared>> = limits[index + 1..].to_vec();
                    let current = shared.clone();
                    return RouteRateLimitFuture::waiting(Box::pin(async move {
                        let decided = decide.await.ok();
                        let mut headers = headers;
                        match Step::settle(&current, tier, &key, decided, &request) {
                            Step::Admit(admitted) => headers = admitted,
                            Step::Refuse(response) => return Ok(response),
                            Step::Skip | Step::Wait { .. } => {}
                        }
                        for shared in rest {
                            match Step::begin(&shared, &request) {
                                Step::Skip => {}
                                Step::Admit(admitted) => headers = admitted,
                                Step::Refuse(response) => return Ok(response),
                                Step::Wait { decide, tier, key } => {
                                    let decided = decide.await.ok();
                                    match Step::settle(&shared, tier, &key, decided, &request) {
                                        Step::Admit(admitted) => headers = admitted,
                                        Step::Refuse(response) => return Ok(response),
                                        Step::Skip | Step::Wait { .. } => {}
                                    }
                                }
                            }
                        }
                        let mut response = inner.call(request).await?;
                        for (name, value) in headers {
                            response.headers_mut().insert(name, value);
                        }
                        Ok(response)
                    }));
                }
            }
        }
        RouteRateLimitFuture::calling(self.inner.call(request), headers)
    }
}

pin_project! {
    /// The response future of [`RouteRateLimit`]: unboxed when every limit
    /// decided at once (the local backend, a remembered Redis verdict);
    /// boxed while a Redis round trip is under way.
    pub struct RouteRateLimitFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Calling { #[pin] future: F, headers: HeaderList },
        Done { response: Option<Response<B>> },
        Waiting { future: Boxed<B, E> },
    }
}

impl<F, B, E> RouteRateLimitFuture<F, B, E> {
    fn calling(future: F, headers: HeaderList) -> Self {
        Self {
            state: State::Calling { future, headers },
        }
    }

    fn done(response: Response<B>) -> Self {
        Self {
            state: State::Done {
                response: Some(response),
            },
        }
    }

    fn waiting(future: Boxed<B, E>) -> Self {
        Self {
            state: State::Waiting { future },
        }
    }
}

impl<F, B, E> Future for RouteRateLimitFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { future, headers } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                for (name, value) in headers.drain(..) {
                    response.headers_mut().insert(name, value);
                }
                Poll::Ready(Ok(response))
            }
            // Polling again after completion is a contract violation by the
            // caller; answering with a pending future would hang it.
            StateProj::Done { response } => Poll::Ready(Ok(response
                .take()
                .expect("RouteRateLimitFuture polled after completion"))),
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for RouteRateLimitFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRateLimitFuture")
            .finish_non_exhaustive()
    }
}
