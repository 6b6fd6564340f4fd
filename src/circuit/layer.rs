use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::{sync::futures::OwnedNotified, time::Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    CircuitBreaker, CircuitConfig, Classify, EjectionGroup, Permit, ServerErrors,
    metrics::CircuitMetrics,
};
use crate::reject::{Rejection, RequestHead};
use std::sync::atomic::{AtomicU64, Ordering};

/// Wraps services in a [`CircuitBreaker`].
///
/// Two ways to use it:
///
/// - **Per service** ([`CircuitBreakerLayer::new`]): every service the layer
///   wraps shares one breaker. While it is open, calls are answered at once
///   with 503 and `Retry-After` (gRPC: `UNAVAILABLE`); the inner service is
///   not called. `poll_ready` stays the inner service's.
/// - **Per endpoint** ([`CircuitBreakerLayer::per_endpoint`]): each
///   `layer()` call (one per discovered endpoint) gets its own breaker in an
///   [`EjectionGroup`], and an open breaker makes `poll_ready` pending until
///   its open time is over, so a balancer routes around the ejected endpoint
///   while the others serve. The group never ejects its last endpoint, so a
///   balancer always has one to choose.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::circuit::{CircuitBreakerLayer, CircuitConfig};
///
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new("orders", CircuitConfig::default()))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// ```
pub struct CircuitBreakerLayer<C = ServerErrors> {
    mode: Mode,
    metrics: Option<CircuitMetrics>,
    config: CircuitConfig,
    classifier: Arc<C>,
}

#[derive(Clone)]
enum Mode {
    Shared(CircuitBreaker),
    PerEndpoint {
        name: Arc<str>,
        group: EjectionGroup,
        next: Arc<AtomicU64>,
    },
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            mode: self.mode.clone(),
            metrics: self.metrics.clone(),
            config: self.config,
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// One breaker named `name`, shared by every service this layer wraps.
    pub fn new(name: impl Into<Arc<str>>, config: CircuitConfig) -> Self {
        Self {
            mode: Mode::Shared(CircuitBreaker::new(name, config)),
            metrics: None,
            config,
            classifier: Arc::new(ServerErrors),
        }
    }

    /// A breaker per wrapped service (endpoint), all in `group`, named
    /// `<name>/<n>` in the order the endpoints were wrapped.
    pub fn per_endpoint(
        name: impl Into<Arc<str>>,
        config: CircuitConfig,
        group: EjectionGroup,
    ) -> Self {
        Self {
            mode: Mode::PerEndpoint {
                name: name.into(),
                group,
                next: Arc::new(AtomicU64::new(0)),
            },
            metrics: None,
            config,
            classifier: Arc::new(ServerErrors),
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Counts failures with `classifier` instead of [`ServerErrors`].
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            mode: self.mode,
            metrics: self.metrics,
            config: self.config,
            classifier: Arc::new(classifier),
        }
    }

    /// Reports circuit states and transitions to `metrics`.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: CircuitMetrics) -> Self {
        if let Mode::Shared(breaker) = &self.mode {
            metrics.attach(breaker);
        }
        self.metrics = Some(metrics);
        self
    }

    /// The shared breaker (per-service mode only), to observe its state.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        match &self.mode {
            Mode::Shared(breaker) => Some(breaker),
            Mode::PerEndpoint { .. } => None,
        }
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let (breaker, eject) = match &self.mode {
            Mode::Shared(breaker) => (breaker.clone(), false),
            Mode::PerEndpoint { name, group, next } => {
                // Each endpoint's breaker gets its own name, so their
                // states do not overwrite each other in metrics.
                let n = next.fetch_add(1, Ordering::Relaxed);
                let breaker = CircuitBreaker::in_group(format!("{name}/{n}"), self.config, group);
                if let Some(metrics) = &self.metrics {
                    metrics.attach(&breaker);
                }
                (breaker, true)
            }
        };
        CircuitBreakerService {
            inner,
            breaker,
            eject,
            classifier: self.classifier.clone(),
            wait: None,
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
pub struct CircuitBreakerService<S, C = ServerErrors> {
    inner: S,
    breaker: CircuitBreaker,
    eject: bool,
    classifier: Arc<C>,
    wait: Option<Wait>,
}

/// What an ejected endpoint's `poll_ready` waits on.
enum Wait {
    Until(Pin<Box<Sleep>>),
    Change(Pin<Box<OwnedNotified>>),
}

impl<S: Clone, C> Clone for CircuitBreakerService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            eject: self.eject,
            classifier: self.classifier.clone(),
            wait: None,
        }
    }
}

impl<S, C> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C> CircuitBreakerService<S, C> {
    /// This service's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreakerService<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Classify<Response<ResBody>, S::Error>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.eject && self.breaker.state() == super::CircuitState::Closed {
            // The common case costs one atomic load.
            self.wait = None;
        } else if self.eject {
            loop {
                if let Some(wait) = &mut self.wait {
                    match wait {
                        Wait::Until(sleep) => ready!(sleep.as_mut().poll(cx)),
                        Wait::Change(notified) => ready!(notified.as_mut().poll(cx)),
                    }
                    self.wait = None;
                }
                // Register for the change before checking, so a change
                // between the check and the wait is not missed.
                let mut notified = Box::pin(self.breaker.changed());
                notified.as_mut().enable();
                match self.breaker.admits() {
                    Ok(()) => break,
                    Err(Some(until)) => {
                        self.wait = Some(Wait::Until(Box::pin(tokio::time::sleep_until(until))));
                    }
                    Err(None) => self.wait = Some(Wait::Change(notified)),
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let acquired = self.breaker.try_acquire();
        // The state the request met, on its span (see `crate::trace`).
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let state = match &acquired {
                Ok(_) => self.breaker.state(),
                Err(_) => super::CircuitState::Open,
            };
            span.record("gateway.circuit.state", state.as_str());
        }
        match acquired {
            Ok(permit) => ResponseFuture {
                kind: Kind::Called {
                    future: self.inner.call(request),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
            Err(refused) => {
                let secs = refused.retry_after.as_secs_f64().ceil() as u64;
                let rejection = Rejection::unavailable(
                    "circuit_open",
                    "the upstream is unavailable",
                    Some(secs),
                );
                ResponseFuture {
                    kind: Kind::Refused {
                        response: Some(rejection.into_response(&RequestHead::of(&request))),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`]: records the
    /// outcome when the inner call completes. Dropping it before then
    /// records nothing and frees a half-open probe slot.
    pub struct ResponseFuture<F, B, C> {
        #[pin]
        kind: Kind<F, B, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, C> {
        Called { #[pin] future: F, permit: Option<Permit>, classifier: Arc<C> },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, C, E> Future for ResponseFuture<F, B, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classify<Response<B>, E>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classifier.classify(&result));
                }
                Poll::Ready(result)
            }
            KindProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F, B, C> fmt::Debug for ResponseFuture<F, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
