//! Retries that are safe, within a budget.

use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response};
use tower::retry::{
    Policy,
    budget::{Budget, TpsBudget},
};

use super::{ProxyBody, UpstreamBody};
use crate::reject::ResponseBody;

/// When and how often the proxy retries.
///
/// A request is retried only when that cannot do harm: its method is
/// idempotent (RFC 9110 §9.2.2) and the upstream failed without answering,
/// or the request never reached the upstream at all (connection refused,
/// an ejected endpoint's breaker refused it). Only requests without a body
/// are retried — bodies are streamed, never buffered for a replay. Retries
/// draw on a budget (a share of recent requests) so a failing upstream is
/// not hit by a retry storm.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::proxy::RetryConfig;
///
/// let retries = RetryConfig::default().attempts(2).budget(Duration::from_secs(10), 10, 0.2);
/// ```
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub(crate) attempts: usize,
    pub(crate) ttl: Duration,
    pub(crate) min_per_sec: u32,
    pub(crate) ratio: f32,
}

impl Default for RetryConfig {
    /// Two retries at most, within 20 % of the requests of the last 10 s
    /// plus 10 retries per second.
    fn default() -> Self {
        Self {
            attempts: 2,
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
        }
    }
}

impl RetryConfig {
    /// No retries.
    pub fn none() -> Self {
        Self {
            attempts: 0,
            ..Self::default()
        }
    }

    /// Retries per request, at most.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// The budget: over `ttl`, `min_per_sec` retries per second plus
    /// `ratio` of the requests made (tower's `TpsBudget`).
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        self.ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.min_per_sec = min_per_sec;
        self.ratio = ratio.clamp(0.0, 1000.0);
        self
    }
}

/// Marks a request whose body is empty, so it can be replayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replayable;

/// The retry policy of one upstream; cloned per request (so `attempts` is
/// per request) while the budget is shared.
#[derive(Clone)]
pub(crate) struct RetryPolicy {
    attempts: usize,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    pub(crate) fn new(config: &RetryConfig) -> Self {
        Self {
            attempts: config.attempts,
            budget: Arc::new(TpsBudget::new(config.ttl, config.min_per_sec, config.ratio)),
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the error proves the request never reached the upstream.
pub(crate) fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return client.is_connect();
        }
        current = e.source();
    }
    false
}

type Outcome = Result<Response<ResponseBody<UpstreamBody>>, tower::BoxError>;

impl Policy<Request<ProxyBody>, Response<ResponseBody<UpstreamBody>>, tower::BoxError>
    for RetryPolicy
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        request: &mut Request<ProxyBody>,
        result: &mut Outcome,
    ) -> Option<Self::Future> {
        let safe = match result {
            // An endpoint's breaker refused the call: nothing was sent.
            Ok(response) if response.body().is_rejection() => true,
            Ok(_) => {
                self.budget.deposit();
                return None;
            }
            Err(error) => never_sent(&**error) || idempotent(request.method()),
        };
        if !safe || self.attempts == 0 || !self.budget.withdraw() {
            return None;
        }
        self.attempts -= 1;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
        if self.attempts == 0 {
            return None;
        }
        request.extensions().get::<Replayable>()?;
        let mut copy = Request::new(super::empty_body());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}
