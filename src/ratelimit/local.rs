//! The in-process limiter: GCRA over every window of a key at once.

use std::{fmt, sync::Arc, time::Duration};

use governor::{
    clock::{Clock, Reference},
    nanos::Nanos,
};

use super::{
    decision::{Decision, States, WindowState},
    limit::{Limit, MAX_WINDOWS, Window},
    store::{Expiring, Sharded},
};

/// Tokio's clock as a [governor clock](governor::clock::Clock): monotonic,
/// and paused and advanced with Tokio's test clock.
///
/// governor's default clock reads the CPU's timestamp counter through
/// `quanta`, which is not guaranteed monotonic across cores and does not
/// follow `tokio::time::pause`; this one reads [`tokio::time::Instant`].
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock counting from now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

/// The default cap on the keys a [`LocalLimiter`] holds (about 150 bytes
/// each).
pub const DEFAULT_MAX_KEYS: usize = 1 << 18;

/// A keyed, in-process rate limiter enforcing a [`Limit`] with GCRA.
///
/// It is the layer's backend when no Redis is configured, and its fallback
/// when Redis fails. It is cheap to clone (one `Arc`).
///
/// # Why not governor's `RateLimiter`
///
/// The windows and quotas are governor's ([`Window::quota`],
/// [`Window::from_quota`]) and so is the clock abstraction
/// ([`governor::clock::Clock`], with [`TokioClock`] as the default), but the
/// decision is made here, for two reasons:
///
/// - A [`Limit`] with several windows must be decided all-or-nothing: if the
///   hourly window refuses, the per-second window must not be charged.
///   governor checks one quota per limiter and has no way to peek without
///   consuming or to refund, so checking two limiters in turn would
///   over-consume the first whenever the second refuses.
/// - governor's keyed store only forgets idle keys when the user calls
///   `retain_recent` (typically from a task they must remember to spawn);
///   here every key's windows share one entry in a sharded map that sweeps
///   itself as it grows, so memory stays bounded with no background task.
///
/// The arithmetic is governor's GCRA, unchanged: admitted when `now ≥ tat −
/// τ`, then `tat = max(tat, now) + T`, with `T = period / limit` and `τ =
/// (burst − 1) × T`. The Redis backend runs the same arithmetic in Lua.
///
/// # Memory
///
/// An idle key (every window full again) is indistinguishable from an
/// unknown one and is dropped by the next sweep of its shard; sweeps run as
/// a shard doubles and at least every ten seconds of traffic. With more
/// than `max_keys` keys active at once, the keys closest to full are
/// forgotten first (they would get their quota back soonest anyway).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use tower_gateway::ratelimit::{Limit, LocalLimiter};
///
/// let limiter = LocalLimiter::new();
/// let limit = Limit::new().per_second(2);
/// assert!(limiter.check("alice", &limit).is_allowed());
/// assert!(limiter.check("alice", &limit).is_allowed());
/// let refused = limiter.check("alice", &limit);
/// assert!(!refused.is_allowed());
/// assert_eq!(refused.retry_after(), Duration::from_millis(500));
/// tokio::time::advance(Duration::from_millis(500)).await;
/// assert!(limiter.check("alice", &limit).is_allowed());
/// # }
/// ```
pub struct LocalLimiter<C: Clock = TokioClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Clock> {
    clock: C,
    start: C::Instant,
    keys: Sharded<Entry>,
}

/// The state of one key: the theoretical arrival time of each window.
struct Entry {
    limit_id: u64,
    /// When every window is full again (the largest `tat`).
    idle_at: u64,
    tats: [u64; MAX_WINDOWS],
}

impl Expiring for Entry {
    fn expires_at(&self) -> u64 {
        self.idle_at
    }
}

impl LocalLimiter {
    /// A limiter on Tokio's clock holding at most [`DEFAULT_MAX_KEYS`]
    /// keys.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A limiter on Tokio's clock holding at most about `max_keys` keys.
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self::with_clock(TokioClock::new(), max_keys)
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> Clone for LocalLimiter<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// A limiter on any governor clock (for instance governor's
    /// `FakeRelativeClock` in tests).
    pub fn with_clock(clock: C, max_keys: usize) -> Self {
        let start = clock.now();
        Self {
            inner: Arc::new(Inner {
                clock,
                start,
                keys: Sharded::new(max_keys),
            }),
        }
    }

    /// Checks one request of `key` against `limit`, counting it in every
    /// window if all of them admit it.
    ///
    /// `limit` should be [valid](Limit::validate); windows past
    /// [`MAX_WINDOWS`] are ignored.
    pub fn check(&self, key: &str, limit: &Limit) -> Decision {
        let now = self.now();
        let windows = &limit.windows()[..limit.windows().len().min(MAX_WINDOWS)];
        let mut shard = self.inner.keys.shard(key, now);
        match shard.map.get_mut(key) {
            Some(entry) => {
                if entry.limit_id != limit.id() {
                    // The limit changed: the old times mean nothing now.
                    *entry = Entry::fresh(limit.id());
                }
                gcra(entry, now, windows)
            }
            None => {
                let mut entry = Entry::fresh(limit.id());
                let decision = gcra(&mut entry, now, windows);
                if decision.allowed {
                    shard.map.insert(key.into(), entry);
                }
                decision
            }
        }
    }

    /// Keys currently held (idle ones included until their shard is swept).
    pub fn len(&self) -> usize {
        self.inner.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        let elapsed: Nanos = self.inner.clock.now().duration_since(self.inner.start);
        // Start at 1 s so that "0" never looks like a time in the past.
        elapsed.as_u64().saturating_add(1_000_000_000)
    }
}

impl Entry {
    fn fresh(limit_id: u64) -> Self {
        Self {
            limit_id,
            idle_at: 0,
            tats: [0; MAX_WINDOWS],
        }
    }
}

/// GCRA over all windows: admit only if every window admits, then charge
/// every window.
fn gcra(entry: &mut Entry, now: u64, windows: &[Window]) -> Decision {
    let mut retry_after = 0;
    for (tat, w) in entry.tats.iter().zip(windows) {
        let allow_at = (*tat).max(now).saturating_sub(w.tau_ns());
        retry_after = retry_after.max(allow_at.saturating_sub(now));
    }
    let allowed = retry_after == 0;
    let mut states = States::default();
    for (tat, w) in entry.tats.iter_mut().zip(windows) {
        let mut t = (*tat).max(now);
        if allowed {
            t = t.saturating_add(w.t_ns());
            *tat = t;
        }
        let capacity = now.saturating_add(w.tau_ns()).saturating_add(w.t_ns());
        states.push(WindowState {
            remaining: capacity.saturating_sub(t) / w.t_ns().max(1),
            reset: Duration::from_nanos(t - now),
        });
    }
    if allowed {
        entry.idle_at = entry.tats[..windows.len()]
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
    }
    Decision {
        allowed,
        retry_after: Duration::from_nanos(retry_after),
        windows: states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter() -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalLimiter::with_clock(clock.clone(), 1000), clock)
    }

    #[test]
    fn burst_then_steady_rate() {
        let (l, clock) = limiter();
        let limit = Limit::new().per_second(5);
        for remaining in (0..5).rev() {
            let d = l.check("k", &limit);
            assert!(d.is_allowed());
            assert_eq!(d.windows()[0].remaining, remaining);
        }
        let d = l.check("k", &limit);
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Duration::from_millis(200));
        clock.advance(Duration::from_millis(199));
        assert!(!l.check("k", &limit).is_allowed());
        clock.advance(Duration::from_millis(1));
        assert!(l.check("k", &limit).is_allowed());
        assert!(!l.check("k", &limit).is_allowed());
    }

    #[test]
    fn a_refusing_window_charges_no_window() {
        let (l, clock) = limiter();
        // 2 per second but only 3 per minute.
        let limit = Limit::new().per_second(2).per_minute(3);
        assert!(l.check("k", &limit).is_allowed());
        assert!(l.check("k", &limit).is_allowed());
        clock.advance(Duration::from_secs(1));
        assert!(l.check("k", &limit).is_allowed());
        // The minute window is exhausted; the second window has one left
        // and must keep it however often the minute window refuses.
        for _ in 0..10 {
            let d = l.check("k", &limit);
            assert!(!d.is_allowed());
            assert_eq!(d.windows()[0].remaining, 1);
            assert_eq!(d.windows()[1].remaining, 0);
        }
        assert_eq!(
            l.check("k", &limit).retry_after(),
            Duration::from_secs(20) - Duration::from_secs(1)
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let (l, clock) = limiter();
        let limit = Limit::new().per_second(10);
        for i in 0..5000 {
            l.check(&i.to_string(), &limit);
            clock.advance(Duration::from_millis(1));
        }
        assert!(l.len() < 1000, "{}", l.len());
    }
}
