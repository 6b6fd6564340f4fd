//! The auth-failure budget: a client address that keeps sending tokens that
//! fail verification is refused before any signature is checked.

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use quick_cache::sync::Cache;
use tokio::time::Instant;

/// How many failed verifications a client address may cause per window
/// before its token-carrying requests are refused with 429 (see
/// [`JwtAuthBuilder::failure_budget`](super::JwtAuthBuilder::failure_budget)).
///
/// The window is fixed: it opens with an address's first failure and lasts
/// `window`; once `max_failures` failures fall inside it, every request from
/// that address that carries a token is refused, before any signature check,
/// until the window closes. `Retry-After` says when that is. Requests
/// without a token are not affected (they cost no signature check), and a
/// refusal by the budget is not itself counted as a failure.
///
/// Addresses are tracked in a bounded cache ([`FailureBudget::max_tracked`]):
/// when it is full, the least recently and least frequently seen addresses
/// are forgotten first, so spraying from many addresses neither grows memory
/// nor pushes out the address that is actually hammering. IPv6 addresses are
/// grouped by their /64 (one host usually owns a whole /64), and
/// IPv4-mapped IPv6 addresses count as IPv4.
///
/// Every failure counts, expired tokens included: clients behind one NAT
/// share a budget, so choose `max_failures` well above what a crowd of
/// honest clients with stale tokens produces in one window. The address is
/// the request's [`ResolvedClient`](crate::client_addr::ResolvedClient):
/// the connection's peer, or, behind a load balancer or reverse proxy, the
/// client a [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer) found
/// in the forwarding header of a proxy you trust. Without that layer every
/// client behind a proxy has the proxy's address and shares one budget.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::auth::{FailureBudget, Issuer, JwtAuthLayer, JwtKey};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = JwtAuthLayer::builder()
///     .issuer(Issuer::new("internal").key(JwtKey::hmac(b"0123456789abcdef0123456789abcdef")))
///     // 20 failed tokens per minute per address, then 429 until the minute ends.
///     .failure_budget(FailureBudget::new(20, Duration::from_secs(60)).max_tracked(100_000))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureBudget {
    pub(crate) max_failures: u32,
    pub(crate) window: Duration,
    pub(crate) max_tracked: usize,
    pub(crate) tarpit: Duration,
}

impl FailureBudget {
    /// At most `max_failures` failed verifications per address within
    /// `window` (at least 1 failure and 1 ms are enforced). Tracks up to
    /// 65 536 addresses.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.clamp(1, MAX_COUNT as u32),
            window: window.max(Duration::from_millis(1)),
            max_tracked: 65_536,
            tarpit: Duration::ZERO,
        }
    }

    /// Holds each 429 of a spent budget for `delay` before answering
    /// (default none). A refusal already costs no signature check, but a
    /// flood still costs a request's worth of work per forged token; held
    /// answers slow an HTTP/1.1 flooder to one token per connection per
    /// `delay`, and its connections are bounded by the server's per-IP cap,
    /// while the gateway spends a timer per held request, not a core.
    pub fn tarpit(mut self, delay: Duration) -> Self {
        self.tarpit = delay;
        self
    }

    /// The most client addresses tracked at once (default 65 536, at least
    /// 1). Each costs well under 100 bytes.
    pub fn max_tracked(mut self, addresses: usize) -> Self {
        self.max_tracked = addresses.max(1);
        self
    }
}

/// The lower 24 bits of a window hold its failure count, the upper 40 the
/// millisecond (since the ledger's epoch) the window opened: one word, so a
/// window is reset and counted without a lock.
const COUNT_BITS: u32 = 24;
const MAX_COUNT: u64 = (1 << COUNT_BITS) - 1;

fn pack(start_ms: u64, count: u64) -> u64 {
    start_ms << COUNT_BITS | count.min(MAX_COUNT)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & MAX_COUNT)
}

/// One address's current window.
#[derive(Debug, Default)]
struct Window(AtomicU64);

/// The failures per client address, shared by every clone of the layer.
pub(crate) struct FailureLedger {
    budget: FailureBudget,
    window_ms: u64,
    epoch: Instant,
    windows: Cache<IpAddr, Arc<Window>>,
}

impl FailureLedger {
    pub(crate) fn tarpit(&self) -> Duration {
        self.budget.tarpit
    }

    pub(crate) fn new(budget: FailureBudget) -> Self {
        Self {
            budget,
            window_ms: u64::try_from(budget.window.as_millis()).unwrap_or(u64::MAX >> COUNT_BITS),
            epoch: Instant::now(),
            windows: Cache::new(budget.max_tracked),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        // Never 0, so that a zero word always means "no window yet".
        u64::try_from(elapsed.as_millis()).map_or(u64::MAX >> COUNT_BITS, |ms| ms + 1)
    }

    /// `Some(time until the window closes)` when `addr` has spent its budget.
    /// One hash lookup; allocates nothing.
    pub(crate) fn exhausted(&self, addr: IpAddr) -> Option<Duration> {
        let window = self.windows.get(&bucket(addr))?;
        let (start, count) = unpack(window.0.load(Ordering::Relaxed));
        let elapsed = self.now_ms().saturating_sub(start);
        (count >= u64::from(self.budget.max_failures) && elapsed < self.window_ms)
            .then(|| Duration::from_millis(self.window_ms - elapsed))
    }

    /// Counts a failed verification for `addr`.
    pub(crate) fn record_failure(&self, addr: IpAddr) {
        let Ok(window) = self
            .windows
            .get_or_insert_with(&bucket(addr), || Ok::<_, Infallible>(Arc::default()));
        let now = self.now_ms();
        let _ = window
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (start, count) = unpack(word);
                Some(
                    if start == 0 || now.saturating_sub(start) >= self.window_ms {
                        pack(now, 1)
                    } else {
                        pack(start, count + 1)
                    },
                )
            });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.len()
    }
}

/// The address a budget is kept for: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn budget_opens_after_the_window() {
        let ledger = FailureLedger::new(FailureBudget::new(3, Duration::from_secs(10)));
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            ledger.record_failure(a);
        }
        assert_eq!(ledger.exhausted(a), None);
        ledger.record_failure(a);
        assert_eq!(ledger.exhausted(a), Some(Duration::from_secs(10)));
        assert_eq!(ledger.exhausted(ip("192.0.2.2")), None);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(ledger.exhausted(a), Some(Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(ledger.exhausted(a), None);
        // A new window starts with the next failure.
        ledger.record_failure(a);
        assert_eq!(ledger.exhausted(a), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_hosts_share_their_64_and_mapped_v4_is_v4() {
        let ledger = FailureLedger::new(FailureBudget::new(2, Duration::from_secs(10)));
        ledger.record_failure(ip("2001:db8:1:2::1"));
        ledger.record_failure(ip("2001:db8:1:2:ffff::9"));
        assert!(ledger.exhausted(ip("2001:db8:1:2::77")).is_some());
        assert!(ledger.exhausted(ip("2001:db8:1:3::1")).is_none());
        ledger.record_failure(ip("::ffff:192.0.2.1"));
        ledger.record_failure(ip("192.0.2.1"));
        assert!(ledger.exhausted(ip("192.0.2.1")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sprayed_addresses_stay_bounded_and_keep_the_hammering_one() {
        let ledger =
            FailureLedger::new(FailureBudget::new(5, Duration::from_secs(60)).max_tracked(64));
        let hammer = ip("198.51.100.1");
        for _ in 0..5 {
            ledger.record_failure(hammer);
            let _ = ledger.exhausted(hammer);
        }
        for i in 0..10_000u32 {
            ledger.record_failure(IpAddr::V4(i.into()));
            if i % 16 == 0 {
                let _ = ledger.exhausted(hammer);
            }
        }
        assert!(ledger.tracked() <= 64 * 2, "{} tracked", ledger.tracked());
        assert!(ledger.exhausted(hammer).is_some());
    }
}
