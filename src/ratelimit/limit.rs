//! Windows and limits: what a key may do, as rate + burst per window.

use std::{sync::Arc, time::Duration};

use governor::Quota;

/// The most windows one [`Limit`] may have (Kong has six; eight leaves room
/// for custom ones while keeping every decision one short Lua loop).
pub const MAX_WINDOWS: usize = 8;

/// The longest window: a year. Longer periods would push the Redis state
/// (microseconds in a Lua double) towards the edge of exact integers.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// One window of a [`Limit`]: `limit` requests per `period`, with bursts of
/// up to `burst` requests, enforced with GCRA (the Generic Cell Rate
/// Algorithm, ITU-T I.371; a token bucket expressed in time).
///
/// GCRA keeps one timestamp per key and window, the *theoretical arrival
/// time*: a request is admitted when it is no earlier than that time minus
/// the tolerance `(burst - 1) × period / limit`, and admitting it moves the
/// time on by `period / limit`. There are no window edges, so a client
/// cannot double its burst by straddling one the way it can against fixed
/// windows: over any interval `L` it gets at most `burst + L × limit /
/// period` requests.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::ratelimit::Window;
///
/// // 100 per minute, at most 10 at once.
/// let w = Window::new("minute", 100, Duration::from_secs(60)).burst(10);
/// assert_eq!(w.emission_interval(), Duration::from_millis(600));
///
/// // The same shape from a governor quota.
/// let q = governor::Quota::per_minute(std::num::NonZeroU32::new(100).unwrap())
///     .allow_burst(std::num::NonZeroU32::new(10).unwrap());
/// assert_eq!(Window::from_quota("minute", Duration::from_secs(60), q), w);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    name: Arc<str>,
    period: Duration,
    limit: u32,
    burst: u32,
    /// `period / limit` in nanoseconds (GCRA's `T`).
    t_ns: u64,
}

impl Window {
    /// `limit` requests per `period`; the burst defaults to `limit` (a
    /// fresh key may spend its whole window at once, as Kong allows).
    ///
    /// `name` labels the window in headers (`RateLimit-Policy: "name"`,
    /// `X-RateLimit-Limit-Name`); it must be 1–32 characters of `a-z`,
    /// `0-9`, `_` or `-`, which [`RateLimitLayer`](super::RateLimitLayer)'s
    /// builder checks.
    pub fn new(name: impl Into<Arc<str>>, limit: u32, period: Duration) -> Self {
        let t_ns = if limit == 0 {
            0
        } else {
            u64::try_from(period.as_nanos() / u128::from(limit)).unwrap_or(u64::MAX)
        };
        Self {
            name: name.into(),
            period,
            limit,
            burst: limit,
            t_ns,
        }
    }

    /// `limit` per second, named `second`.
    pub fn per_second(limit: u32) -> Self {
        Self::new("second", limit, Duration::from_secs(1))
    }

    /// `limit` per minute, named `minute`.
    pub fn per_minute(limit: u32) -> Self {
        Self::new("minute", limit, Duration::from_secs(60))
    }

    /// `limit` per hour, named `hour`.
    pub fn per_hour(limit: u32) -> Self {
        Self::new("hour", limit, Duration::from_secs(3600))
    }

    /// `limit` per day, named `day`.
    pub fn per_day(limit: u32) -> Self {
        Self::new("day", limit, Duration::from_secs(86_400))
    }

    /// The window a governor [`Quota`] describes, announced as a window of
    /// `period`: the rate is the quota's replenish interval, the burst its
    /// burst size.
    pub fn from_quota(name: impl Into<Arc<str>>, period: Duration, quota: Quota) -> Self {
        let t = quota.replenish_interval();
        let limit = (period.as_nanos() / t.as_nanos().max(1)).min(u128::from(u32::MAX)) as u32;
        Self {
            name: name.into(),
            period,
            limit,
            burst: quota.burst_size().get(),
            t_ns: u64::try_from(t.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Allows bursts of up to `burst` requests (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The window's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The period the limit is announced over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Requests per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The largest burst.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The steady-state spacing of requests, `period / limit`.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.t_ns)
    }

    /// This window as a governor [`Quota`] (`None` if it is invalid).
    pub fn quota(&self) -> Option<Quota> {
        let burst = std::num::NonZeroU32::new(self.burst)?;
        Some(Quota::with_period(self.emission_interval())?.allow_burst(burst))
    }

    /// GCRA's `T` in nanoseconds.
    pub(crate) fn t_ns(&self) -> u64 {
        self.t_ns
    }

    /// GCRA's tolerance `τ = (burst - 1) × T` in nanoseconds.
    pub(crate) fn tau_ns(&self) -> u64 {
        self.t_ns
            .saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }

    /// The same window with `share` of its rate and burst (at least 1 of
    /// each): the local fallback's part of a limit shared by replicas.
    pub(crate) fn scaled(&self, share: f64) -> Self {
        let scale = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
        let limit = scale(self.limit);
        Self::new(self.name.clone(), limit, self.period).burst(scale(self.burst))
    }

    fn validate(&self) -> Result<(), LimitError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(LimitError::InvalidName(self.name.to_string()));
        }
        let invalid = |reason| LimitError::InvalidWindow {
            name: self.name.to_string(),
            reason,
        };
        if self.limit == 0 {
            return Err(invalid("the limit must be at least 1"));
        }
        if self.burst == 0 {
            return Err(invalid("the burst must be at least 1"));
        }
        if self.period < Duration::from_millis(1) || self.period > MAX_PERIOD {
            return Err(invalid("the period must be between 1 ms and 366 days"));
        }
        // Redis keeps time in microseconds: a finer emission interval
        // would round to zero there.
        if self.t_ns < 1_000 {
            return Err(invalid("more than 1,000,000 requests per second"));
        }
        if u128::from(self.t_ns) * u128::from(self.burst) > MAX_PERIOD.as_nanos() * 10 {
            return Err(invalid("the burst takes more than ten years to refill"));
        }
        Ok(())
    }
}

/// What one key may do: one or more [`Window`]s, all decided together.
///
/// A request is admitted only if every window admits it, and then it is
/// counted in every window; if one window refuses, none is consumed. This
/// is Kong's `config.second = 5, config.hour = 1000`:
///
/// ```
/// use tower_gateway::ratelimit::Limit;
///
/// let limit = Limit::new().per_second(5).per_hour(1000);
/// assert_eq!(limit.windows().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limit {
    windows: Vec<Window>,
    /// A fingerprint of the windows' GCRA parameters.
    id: u64,
}

impl Limit {
    /// A limit with no windows yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a window.
    pub fn window(mut self, window: Window) -> Self {
        self.windows.push(window);
        self.id = fingerprint(&self.windows);
        self
    }

    /// Adds `limit` per second.
    pub fn per_second(self, limit: u32) -> Self {
        self.window(Window::per_second(limit))
    }

    /// Adds `limit` per minute.
    pub fn per_minute(self, limit: u32) -> Self {
        self.window(Window::per_minute(limit))
    }

    /// Adds `limit` per hour.
    pub fn per_hour(self, limit: u32) -> Self {
        self.window(Window::per_hour(limit))
    }

    /// Adds `limit` per day.
    pub fn per_day(self, limit: u32) -> Self {
        self.window(Window::per_day(limit))
    }

    /// The windows, in the order they were added.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// A fingerprint of the windows' parameters: state kept for one limit
    /// is never read under another.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The same limit with `share` of every window.
    pub(crate) fn scaled(&self, share: f64) -> Self {
        self.windows
            .iter()
            .fold(Limit::new(), |limit, w| limit.window(w.scaled(share)))
    }

    /// Checks that the limit can be enforced: 1 to [`MAX_WINDOWS`] valid
    /// windows with distinct names.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.windows.is_empty() {
            return Err(LimitError::NoWindows);
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(LimitError::TooManyWindows(self.windows.len()));
        }
        for (i, w) in self.windows.iter().enumerate() {
            w.validate()?;
            if self.windows[..i].iter().any(|o| o.name == w.name) {
                return Err(LimitError::DuplicateName(w.name.to_string()));
            }
        }
        Ok(())
    }
}

/// FNV-1a over the windows' `T` and burst: stable across processes, so it
/// can name shared state.
fn fingerprint(windows: &[Window]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for w in windows {
        for byte in w
            .t_ns
            .to_le_bytes()
            .into_iter()
            .chain(w.burst.to_le_bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Why a [`Limit`] cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A limit needs at least one window.
    #[error("a limit needs at least one window")]
    NoWindows,
    /// More than [`MAX_WINDOWS`] windows.
    #[error("{0} windows; at most {MAX_WINDOWS} are supported")]
    TooManyWindows(usize),
    /// Two windows share a name.
    #[error("two windows are named {0:?}")]
    DuplicateName(String),
    /// A window name that is not 1–32 characters of `a-z0-9_-`.
    #[error("window name {0:?} is not 1-32 characters of a-z, 0-9, '_' or '-'")]
    InvalidName(String),
    /// A window that cannot be enforced.
    #[error("window {name:?}: {reason}")]
    InvalidWindow {
        /// The window.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_parameters() {
        let w = Window::per_second(5);
        assert_eq!(w.t_ns(), 200_000_000);
        assert_eq!(w.tau_ns(), 800_000_000);
        let w = Window::per_hour(50).burst(1);
        assert_eq!(w.tau_ns(), 0);
        assert_eq!(w.quota().unwrap().burst_size().get(), 1);
    }

    #[test]
    fn validation() {
        assert_eq!(Limit::new().validate(), Err(LimitError::NoWindows));
        assert!(Limit::new().per_second(0).validate().is_err());
        assert!(Limit::new().per_second(2_000_000).validate().is_err());
        assert!(
            Limit::new()
                .window(Window::new("Bad Name", 1, Duration::from_secs(1)))
                .validate()
                .is_err()
        );
        assert!(Limit::new().per_second(1).per_second(2).validate().is_err());
        assert!(Limit::new().per_second(5).per_hour(1000).validate().is_ok());
    }

    #[test]
    fn fingerprint_follows_parameters() {
        let a = Limit::new().per_second(5);
        assert_eq!(a.id(), Limit::new().per_second(5).id());
        assert_ne!(a.id(), Limit::new().per_second(6).id());
        assert_ne!(
            a.id(),
            Limit::new().window(Window::per_second(5).burst(1)).id()
        );
    }

    #[test]
    fn scaling_keeps_at_least_one() {
        let l = Limit::new().per_second(5).per_hour(1000).scaled(1.0 / 3.0);
        assert_eq!(l.windows()[0].limit(), 1);
        assert_eq!(l.windows()[1].limit(), 333);
        assert_eq!(l.windows()[1].burst_size(), 333);
    }
}
