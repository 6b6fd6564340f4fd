//! Events that layers report, for metrics and logs.
//!
//! Every layer that makes a decision worth counting reports it to an
//! [`Observer`]: the default does nothing; [`GatewayMetrics`] (feature
//! `metrics`) turns the events into Prometheus series. Implement [`Observe`]
//! to send them elsewhere.
//!
//! [`GatewayMetrics`]: crate::metrics::GatewayMetrics
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tower_gateway::observe::{Observe, Observer};
//!
//! #[derive(Default)]
//! struct CountAuthFailures(AtomicU64);
//!
//! impl Observe for CountAuthFailures {
//!     fn auth_rejected(&self, _reason: &'static str) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! let observer = Observer::new(CountAuthFailures::default());
//! observer.auth_rejected("expired");
//! ```

use std::{fmt, sync::Arc, time::Duration};

/// Receives the events of the gateway's layers. Every method has a no-op
/// default; implement the ones you need. Methods are called on the request
/// path: keep them cheap and never block.
pub trait Observe: Send + Sync + 'static {
    /// A request was refused by authentication; `reason` is
    /// [`AuthError::reason`](crate::auth::AuthError::reason).
    fn auth_rejected(&self, reason: &'static str) {
        let _ = reason;
    }

    /// A JWKS fetch for `issuer` finished.
    fn jwks_refreshed(&self, issuer: &str, ok: bool) {
        let _ = (issuer, ok);
    }

    /// RBAC denied a request (or, in shadow mode, would have).
    fn rbac_denied(&self, rule: &str, shadow: bool) {
        let _ = (rule, shadow);
    }

    /// A circuit breaker is in `state` (`closed`, `open`, `half_open`):
    /// reported when it is created and on every change.
    fn circuit_state(&self, name: &str, state: &'static str) {
        let _ = (name, state);
    }

    /// A circuit breaker changed state.
    fn circuit_transition(&self, name: &str, from: &'static str, to: &'static str) {
        let _ = (name, from, to);
    }

    /// A rate-limit decision for `route`; `outcome` is `allowed`, `limited`,
    /// `backend_error`, `fallback`, or `missing_key` (the request carried
    /// nothing to key it by).
    fn ratelimit_decision(&self, route: &str, outcome: &'static str) {
        let _ = (route, outcome);
    }

    /// Service discovery now knows `count` healthy endpoints of `service`.
    fn endpoints(&self, service: &str, count: usize) {
        let _ = (service, count);
    }

    /// The discovery data of `service` is `age` old (zero right after a
    /// successful update).
    fn discovery_staleness(&self, service: &str, age: Duration) {
        let _ = (service, age);
    }

    /// An upstream call to `service` took `elapsed`.
    fn upstream_latency(&self, service: &str, elapsed: Duration) {
        let _ = (service, elapsed);
    }
}

/// A shared, cloneable [`Observe`] implementation; the default ignores
/// every event.
#[derive(Clone)]
pub struct Observer(Arc<dyn Observe>);

struct Ignore;
impl Observe for Ignore {}

impl Observer {
    /// Wraps an observer.
    pub fn new(observer: impl Observe) -> Self {
        Self(Arc::new(observer))
    }

    /// Wraps an observer that is already shared.
    pub fn from_arc(observer: Arc<dyn Observe>) -> Self {
        Self(observer)
    }
}

impl Default for Observer {
    fn default() -> Self {
        Self::new(Ignore)
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer(..)")
    }
}

impl std::ops::Deref for Observer {
    type Target = dyn Observe;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
