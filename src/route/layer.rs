use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::Routes;
use crate::reject::{RequestHead, ResponseFuture};

/// Matches each request against [`Routes`] once and refuses, in this one
/// place, the requests no route takes (see the [module
/// documentation](super)). Place it early: before authentication, so an
/// unknown path is a 404 whatever the credentials (as in Kong), and before
/// every layer that reads the route.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    routes: Arc<Routes>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::GatewayMetrics>,
}

impl RouteLayer {
    /// Matches against `routes`.
    pub fn new(routes: &Arc<Routes>) -> Self {
        Self {
            routes: routes.clone(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Counts the requests it refuses in `metrics`' request series, under
    /// the route label `unmatched` (a [`MetricsLayer`] placed inside this
    /// layer counts the others, by route).
    ///
    /// [`MetricsLayer`]: crate::metrics::MetricsLayer
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: &crate::metrics::GatewayMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
    layer: RouteLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RouteService<S>
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
        match self.layer.routes.resolve(&mut request) {
            Ok(_) => ResponseFuture::inner(self.inner.call(request)),
            Err(rejection) => {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.layer.metrics {
                    metrics.record_unmatched(request.method(), rejection.status());
                }
                ResponseFuture::rejected(rejection.into_response(&RequestHead::of(&request)))
            }
        }
    }
}
