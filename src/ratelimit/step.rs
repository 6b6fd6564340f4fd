//! One limit's verdict for one request, as far as it can be reached
//! without waiting: shared by [`RateLimit`](super::RateLimit) and
//! [`RouteRateLimit`](super::RouteRateLimit).

use http::{Request, Response};

use super::{
    RateLimitOutcome,
    future::{Decide, route_label},
    headers::HeaderList,
    key::{KeyBuilder, RequestInfo},
    layer::{Backend, MissingKey, Settled, Shared},
};
use crate::{identity::Identity, reject::RequestHead};

/// One limit's verdict, as far as it can be reached without waiting.
pub(crate) enum Step<B> {
    /// The limit does not apply (no tier for the caller, or no key and
    /// unkeyed requests are let through).
    Skip,
    Admit(HeaderList),
    Refuse(Response<B>),
    /// A Redis round trip is under way.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Wait {
        decide: Decide,
        tier: usize,
        key: String,
    },
}

impl<B: Default> Step<B> {
    /// Starts one limit's decision for `request`.
    pub(crate) fn begin<ReqBody>(shared: &Shared, request: &Request<ReqBody>) -> Self {
        let Some(tier) = shared.select(request.extensions().get::<Identity>()) else {
            return Step::Skip;
        };
        let mut key = KeyBuilder::from_prefix(&shared.tier(tier).tag);
        if let Err(error) = shared.key.extract(&RequestInfo::of(request), &mut key) {
            tracing::debug!(target: "tower_gateway::ratelimit", %error, "no rate-limit key");
            shared.report(route_label(request), RateLimitOutcome::MissingKey);
            return match shared.missing {
                MissingKey::Allow => Step::Skip,
                MissingKey::Reject => Step::Refuse(shared.missing_key(&RequestHead::of(request))),
            };
        }
        let key = key.into_string();
        let decided = match &shared.backend {
            Backend::Local(local) => Some(local.check(&key, &shared.tier(tier).limit)),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => match redis.begin(&key, &shared.tier(tier).limit) {
                super::redis::Begin::Ready(result) => result.ok(),
                super::redis::Begin::Pending(decide) => return Step::Wait { decide, tier, key },
            },
        };
        Self::settle(shared, tier, &key, decided, request)
    }

    /// Ends a decision with the backend's answer (`None`: it failed).
    pub(crate) fn settle<ReqBody>(
        shared: &Shared,
        tier: usize,
        key: &str,
        decided: Option<super::Decision>,
        request: &Request<ReqBody>,
    ) -> Self {
        match shared.settle(
            tier,
            key,
            decided,
            route_label(request),
            &RequestHead::of(request),
        ) {
            Settled::Admit(headers) => Step::Admit(headers),
            Settled::Refuse(response) => Step::Refuse(response),
        }
    }
}
