//! The metrics of [`JwtAuthLayer`](super::JwtAuthLayer).

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::AuthMetrics;
#[cfg(all(not(feature = "metrics"), feature = "jwks"))]
pub(crate) use disabled::JwksMetrics;
#[cfg(feature = "metrics")]
pub use enabled::{AuthMetrics, JwksMetrics};

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family},
    };

    use crate::metrics::{GatewayMetrics, Series};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ReasonLabels {
        reason: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct IssuerResult {
        issuer: Arc<str>,
        result: &'static str,
    }

    /// The metrics of [`JwtAuthLayer`](crate::auth::JwtAuthLayer): attach
    /// with [`JwtAuthBuilder::metrics`](crate::auth::JwtAuthBuilder::metrics).
    ///
    /// - `auth_failures_total{reason}`: requests refused, by
    ///   [`AuthError::reason`](crate::auth::AuthError::reason) (refusals by
    ///   the [failure budget](crate::auth::FailureBudget) are
    ///   `auth_failure_budget`);
    /// - `jwks_refreshes_total{issuer,result}`: JWKS fetches, `success` or
    ///   `failure`.
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same families.
    #[derive(Clone, Debug)]
    pub struct AuthMetrics {
        failures: Family<ReasonLabels, Counter>,
        jwks: Family<IssuerResult, Counter>,
    }

    impl AuthMetrics {
        /// The auth families of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            metrics.layer_families(|registry| {
                let handle = Self {
                    failures: Family::default(),
                    jwks: Family::default(),
                };
                registry.register(
                    "auth_failures",
                    "Requests refused by authentication, by reason",
                    handle.failures.clone(),
                );
                registry.register(
                    "jwks_refreshes",
                    "JWKS fetches by issuer and result",
                    handle.jwks.clone(),
                );
                handle
            })
        }

        /// Counts a refused request; `reason` is
        /// [`AuthError::reason`](crate::auth::AuthError::reason).
        pub fn rejected(&self, reason: &'static str) {
            self.failures.get_or_create(&ReasonLabels { reason }).inc();
        }

        /// The JWKS refresh counters of `issuer`.
        pub fn jwks(&self, issuer: &str) -> JwksMetrics {
            let issuer: Arc<str> = Arc::from(issuer);
            let series = |result| {
                Series::new(
                    &self.jwks,
                    IssuerResult {
                        issuer: issuer.clone(),
                        result,
                    },
                )
            };
            JwksMetrics {
                success: series("success"),
                failure: series("failure"),
            }
        }
    }

    /// The JWKS refresh counters of one issuer, from [`AuthMetrics::jwks`].
    #[derive(Clone, Debug)]
    pub struct JwksMetrics {
        success: Series<IssuerResult, Counter>,
        failure: Series<IssuerResult, Counter>,
    }

    impl JwksMetrics {
        /// Counts a JWKS fetch that succeeded (`ok`) or failed.
        pub fn refreshed(&self, ok: bool) {
            let series = if ok { &self.success } else { &self.failure };
            series.get().inc();
        }
    }
}

/// Without the `metrics` feature no handle exists: these types have no
/// values, and the layer's `Option`s of them are always `None`.
#[cfg(not(feature = "metrics"))]
mod disabled {
    #[derive(Clone, Debug)]
    pub(crate) enum AuthMetrics {}

    impl AuthMetrics {
        pub(crate) fn rejected(&self, _reason: &'static str) {
            match *self {}
        }

        #[cfg(feature = "jwks")]
        pub(crate) fn jwks(&self, _issuer: &str) -> JwksMetrics {
            match *self {}
        }
    }

    #[cfg(feature = "jwks")]
    #[derive(Clone, Debug)]
    pub(crate) enum JwksMetrics {}

    #[cfg(feature = "jwks")]
    impl JwksMetrics {
        pub(crate) fn refreshed(&self, _ok: bool) {
            match *self {}
        }
    }
}
