use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Renderer, ResponseBody};

/// The render step: turns every refusal that reaches it into its response
/// body, with one [`Renderer`] for the whole stack.
///
/// Place it outermost, around the layers that may refuse. `server::serve`
/// has this step built in; add the layer when the stack is served some
/// other way (an axum `Router`, a hyper connection of your own).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_gateway::{rbac::RbacLayer, reject::RenderLayer};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let svc = ServiceBuilder::new()
///     .layer(RenderLayer::new())
///     .layer(RbacLayer::require_authenticated())
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
///     });
/// let response = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct RenderLayer {
    renderer: Renderer,
}

impl RenderLayer {
    /// Renders with [`ProblemJson`](super::ProblemJson): RFC 9457 problem
    /// documents for HTTP, trailers-only responses for gRPC.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders with `renderer` instead.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
}

impl<S> Layer<S> for RenderLayer {
    type Service = Render<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Render {
            inner,
            renderer: self.renderer.clone(),
        }
    }
}

/// The service of [`RenderLayer`].
#[derive(Debug, Clone)]
pub struct Render<S> {
    inner: S,
    renderer: Renderer,
}

impl<S> Render<S> {
    /// Renders the refusals of `inner` with `renderer`.
    pub fn new(inner: S, renderer: Renderer) -> Self {
        Self { inner, renderer }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Render<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RenderFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        RenderFuture {
            inner: self.inner.call(request),
            renderer: self.renderer.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Render`].
    pub struct RenderFuture<F> {
        #[pin]
        inner: F,
        renderer: Renderer,
    }
}

impl<F> RenderFuture<F> {
    /// Renders the refusal `inner` may resolve to with `renderer`.
    pub fn new(inner: F, renderer: Renderer) -> Self {
        Self { inner, renderer }
    }
}

impl<F, B, E> Future for RenderFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.inner
            .poll(cx)
            .map(|result| result.map(|response| this.renderer.render_response(response)))
    }
}

impl<F> std::fmt::Debug for RenderFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderFuture").finish_non_exhaustive()
    }
}
