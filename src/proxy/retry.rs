//! Retries that are safe, within a budget.

use std::time::Duration;

/// When and how often the proxy retries.
///
/// A request is retried only when that cannot do harm:
/// - it never reached the upstream (the connection was refused, or the
///   endpoint's breaker refused the call): any method, body included —
///   bodies are streamed, never buffered, but one that no attempt has
///   started to send can still go to another endpoint;
/// - or its method is idempotent (RFC 9110 §9.2.2), it has no body, and
///   the upstream failed without answering.
///
/// A retry goes to another endpoint than the ones the request already
/// tried, while one is left. Retries draw on a budget (a share of recent
/// requests) so a failing upstream is not hit by a retry storm. A response,
/// whatever its status, is never retried.
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
