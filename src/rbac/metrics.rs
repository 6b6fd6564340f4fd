//! The metrics of [`RbacLayer`](super::RbacLayer).

use super::policy::Matched;
#[cfg(feature = "metrics")]
use super::policy::Policy;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::RuleDenials;
#[cfg(feature = "metrics")]
pub use enabled::RbacMetrics;
#[cfg(feature = "metrics")]
pub(crate) use enabled::RuleDenials;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family},
    };

    use super::{Matched, Policy};
    use crate::metrics::{GatewayMetrics, Series};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RuleLabels {
        rule: Arc<str>,
        mode: &'static str,
    }

    /// The metrics of [`RbacLayer`](crate::rbac::RbacLayer): attach with
    /// [`RbacLayer::metrics`](crate::rbac::RbacLayer::metrics).
    ///
    /// `rbac_denials_total{rule,mode}`: requests denied, by the label of the
    /// [rule](crate::rbac::Rule::name) that decided (`<unmatched>` for
    /// none), `mode` `enforce` or `shadow` (would have been denied).
    ///
    /// Cheap to clone; every handle created from one [`GatewayMetrics`]
    /// shares the same family.
    #[derive(Clone, Debug)]
    pub struct RbacMetrics {
        denials: Family<RuleLabels, Counter>,
    }

    impl RbacMetrics {
        /// The RBAC family of `metrics`, registered on first use.
        pub fn new(metrics: &GatewayMetrics) -> Self {
            metrics.layer_families(|registry| {
                let handle = Self {
                    denials: Family::default(),
                };
                registry.register(
                    "rbac_denials",
                    "Requests denied by RBAC (mode=shadow: would have been)",
                    handle.denials.clone(),
                );
                handle
            })
        }

        /// The counters of every rule of `policy`, resolved once, so that a
        /// denial is one atomic increment.
        pub(crate) fn rules(&self, policy: &Policy) -> RuleDenials {
            let series = policy
                .labels()
                .map(|label| {
                    let rule: Arc<str> = Arc::from(label);
                    ["enforce", "shadow"].map(|mode| {
                        Series::new(
                            &self.denials,
                            RuleLabels {
                                rule: rule.clone(),
                                mode,
                            },
                        )
                    })
                })
                .collect();
            RuleDenials { series }
        }
    }

    /// The denial counters of one policy, per rule (then `<unmatched>`) and
    /// mode.
    #[derive(Clone, Debug)]
    pub(crate) struct RuleDenials {
        series: Box<[[Series<RuleLabels, Counter>; 2]]>,
    }

    impl RuleDenials {
        /// Counts a denial by `matched` (in shadow mode: a would-be one).
        pub(crate) fn denied(&self, matched: Matched, shadow: bool) {
            let index = match matched {
                Matched::Rule(i) => i,
                Matched::Unmatched => self.series.len() - 1,
            };
            if let Some(modes) = self.series.get(index) {
                modes[usize::from(shadow)].get().inc();
            }
        }
    }
}

/// Without the `metrics` feature no handle exists: the layer's `Option` of
/// this type is always `None`.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use super::Matched;

    #[derive(Clone, Debug)]
    pub(crate) enum RuleDenials {}

    impl RuleDenials {
        pub(crate) fn denied(&self, _matched: Matched, _shadow: bool) {
            match *self {}
        }
    }
}
