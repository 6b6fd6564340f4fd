//! Choosing an endpoint for each request.
//!
//! The endpoints of an upstream live in one shared, copy-on-write list that
//! a background task rebuilds when discovery changes. A request reads the
//! current list (one atomic load), picks an endpoint with the configured
//! [`Balancer`] and calls it — no queue, no worker task, no lock on the
//! request path. Per-endpoint state (requests in flight, the latency
//! estimate, the circuit breaker, a refused-connection ejection) is atomics
//! that survive rebuilds for as long as the endpoint stays in the list.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http::{HeaderValue, uri::Authority};

use crate::{
    circuit::{CircuitBreaker, CircuitState},
    discovery::Endpoint,
};

/// How an [`Upstream`](super::Upstream) spreads requests over its endpoints.
///
/// The default is [`Balancer::LeastRequest`], as in Envoy: it needs no
/// warm-up, so a new endpoint gets its share at once, and it never starves
/// an endpoint for having answered slowly once.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::proxy::Balancer;
///
/// let ewma = Balancer::peak_ewma().initial_rtt(Duration::from_millis(5)).decay(Duration::from_secs(5));
/// let rr = Balancer::RoundRobin;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Balancer {
    /// Power of two choices over the requests in flight: two endpoints
    /// drawn at random, the one with fewer requests in flight wins.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two choices over peak-EWMA cost (latency estimate × (requests
    /// in flight + 1)), as linkerd does: sensitive to slow endpoints, at the
    /// price of a warm-up. See [`PeakEwma`].
    PeakEwma(PeakEwma),
}

impl Balancer {
    /// [`Balancer::PeakEwma`] with the default settings.
    pub fn peak_ewma() -> PeakEwma {
        PeakEwma::default()
    }
}

/// The settings of [`Balancer::PeakEwma`].
///
/// An endpoint's latency estimate jumps to any slower sample (the peak) and
/// decays towards faster ones over `decay`. A new endpoint starts from the
/// mean estimate of its peers, or from `initial_rtt` when it has none, so it
/// gets its share of traffic at once instead of waiting for a pessimistic
/// guess to decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    pub(crate) initial_rtt: Duration,
    pub(crate) decay: Duration,
}

impl Default for PeakEwma {
    /// `initial_rtt` 30 ms, `decay` 10 s (linkerd's values).
    fn default() -> Self {
        Self {
            initial_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

impl PeakEwma {
    /// The estimate of the first endpoint, before any has answered.
    pub fn initial_rtt(mut self, rtt: Duration) -> Self {
        self.initial_rtt = rtt;
        self
    }

    /// How fast the estimate forgets a slow sample (the EWMA's time
    /// constant; at least 1 ms). Shorter forgives sooner.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay.max(Duration::from_millis(1));
        self
    }
}

impl From<PeakEwma> for Balancer {
    fn from(settings: PeakEwma) -> Self {
        Balancer::PeakEwma(settings)
    }
}

/// One endpoint and what the balancer knows about it.
pub(crate) struct EndpointState {
    pub(crate) id: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) authority: Authority,
    /// The `Host` header for this endpoint, built once.
    pub(crate) host: HeaderValue,
    /// Its authority as shared text, for access logs (no copy per request).
    pub(crate) label: std::sync::Arc<str>,
    pub(crate) breaker: CircuitBreaker,
    in_flight: AtomicUsize,
    /// Peak-EWMA estimate in nanoseconds (f64 bits), and when it was last
    /// updated (nanoseconds since the list's epoch).
    rtt_ns: AtomicU64,
    rtt_at: AtomicU64,
    /// A refused connection ejects the endpoint until this instant
    /// (milliseconds since the epoch; 0: not ejected), for a time that
    /// doubles with consecutive refusals.
    refused_until: AtomicU64,
    refusals: AtomicU32,
    /// Streams open (request sent, response body not done) per client
    /// lane; see `forward::HTTP2_LANES`.
    lanes: Box<[AtomicUsize]>,
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("id", &self.id)
            .field("authority", &self.authority)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The first ejection after a refused connection; it doubles with each
/// consecutive refusal, up to [`MAX_REFUSED_EJECTION`].
const REFUSED_EJECTION: Duration = Duration::from_secs(1);
const MAX_REFUSED_EJECTION: Duration = Duration::from_secs(30);

impl EndpointState {
    pub(crate) fn new(
        id: String,
        endpoint: Endpoint,
        authority: Authority,
        breaker: CircuitBreaker,
        initial_rtt: Duration,
        lanes: usize,
    ) -> Option<Self> {
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Self {
            id,
            endpoint,
            label: std::sync::Arc::from(authority.as_str()),
            authority,
            host,
            breaker,
            in_flight: AtomicUsize::new(0),
            rtt_ns: AtomicU64::new((initial_rtt.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(0),
            refused_until: AtomicU64::new(0),
            refusals: AtomicU32::new(0),
            lanes: (0..lanes.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    fn available(&self, epoch: Instant) -> bool {
        let until = self.refused_until.load(Ordering::Relaxed);
        if until != 0 && (epoch.elapsed().as_millis() as u64) < until {
            return false;
        }
        // One atomic load while closed; an open breaker ejects the endpoint.
        self.breaker.state() == CircuitState::Closed || self.breaker.admits().is_ok()
    }

    /// Peak-EWMA cost: the estimate times the requests in flight plus
    /// this one. An endpoint that has not answered yet costs nothing while
    /// idle — it is probed one request at a time instead of waiting for a
    /// guess to decay below its peers' real figures.
    /// A slow sample is forgotten with time even when the endpoint gets no
    /// traffic to prove itself: the estimate decays towards zero while it
    /// is not updated (as in Finagle and tower).
    fn ewma_cost(&self, now_ns: u64, decay: Duration) -> f64 {
        let in_flight = self.in_flight() as f64;
        let at = self.rtt_at.load(Ordering::Relaxed);
        if at == 0 {
            return self.rtt() * in_flight;
        }
        let idle = now_ns.saturating_sub(at) as f64;
        let estimate = self.rtt() * (-idle / decay.as_nanos() as f64).exp();
        estimate * (in_flight + 1.0)
    }

    fn rtt(&self) -> f64 {
        f64::from_bits(self.rtt_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Opens a stream on the lane with the fewest open streams; it counts
    /// until the guard drops (with the response body).
    pub(crate) fn open_stream(self: &Arc<Self>) -> OpenStream {
        let lane = if self.lanes.len() == 1 {
            0
        } else {
            (0..self.lanes.len())
                .min_by_key(|&i| self.lanes[i].load(Ordering::Relaxed))
                .unwrap_or(0)
        };
        self.lanes[lane].fetch_add(1, Ordering::Relaxed);
        OpenStream {
            endpoint: self.clone(),
            lane,
        }
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Folds one latency sample into the peak-EWMA estimate.
    pub(crate) fn observe_rtt(&self, rtt: Duration, epoch: Instant, decay: Duration) {
        let now = (epoch.elapsed().as_nanos() as u64).max(1);
        let sample = rtt.as_nanos() as f64;
        let last = self.rtt_at.swap(now, Ordering::Relaxed);
        let estimate = self.rtt();
        // The first sample replaces the starting guess.
        let next = if last == 0 || sample > estimate {
            sample
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / decay.as_nanos() as f64).exp();
            estimate * w + sample * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The connection was refused: eject the endpoint for a while.
    pub(crate) fn refused(&self, epoch: Instant) {
        let n = self.refusals.fetch_add(1, Ordering::Relaxed).min(5);
        let ejection = (REFUSED_EJECTION * 2u32.pow(n)).min(MAX_REFUSED_EJECTION);
        let until = (epoch.elapsed() + ejection).as_millis() as u64;
        self.refused_until.store(until.max(1), Ordering::Relaxed);
    }

    /// The endpoint answered: a refusal streak is over.
    pub(crate) fn answered(&self) {
        if self.refusals.load(Ordering::Relaxed) != 0 {
            self.refusals.store(0, Ordering::Relaxed);
            self.refused_until.store(0, Ordering::Relaxed);
        }
    }
}

/// A request in flight to an endpoint (for least-request and peak-EWMA).
pub(crate) struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream open on one of an endpoint's client lanes.
pub(crate) struct OpenStream {
    endpoint: Arc<EndpointState>,
    lane: usize,
}

impl OpenStream {
    pub(crate) fn lane(&self) -> usize {
        self.lane
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.endpoint.lanes[self.lane].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one upstream, rebuilt on discovery changes and read by
/// every request.
pub(crate) struct EndpointList {
    current: ArcSwap<Vec<Arc<EndpointState>>>,
    balancer: Balancer,
    next: AtomicUsize,
    epoch: Instant,
}

impl EndpointList {
    pub(crate) fn new(balancer: Balancer) -> Self {
        Self {
            current: ArcSwap::from_pointee(Vec::new()),
            balancer,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    pub(crate) fn decay(&self) -> Option<Duration> {
        match self.balancer {
            Balancer::PeakEwma(settings) => Some(settings.decay),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.current.load().len()
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<EndpointState>>> {
        self.current.load_full()
    }

    /// The estimate a new endpoint starts from: its peers' mean, or the
    /// configured initial RTT.
    pub(crate) fn initial_rtt(&self, peers: &[Arc<EndpointState>]) -> Duration {
        let Balancer::PeakEwma(settings) = self.balancer else {
            return Duration::ZERO;
        };
        if peers.is_empty() {
            return settings.initial_rtt;
        }
        let mean = peers.iter().map(|e| e.rtt()).sum::<f64>() / peers.len() as f64;
        Duration::from_nanos(mean as u64)
    }

    pub(crate) fn publish(&self, endpoints: Vec<Arc<EndpointState>>) {
        self.current.store(Arc::new(endpoints));
    }

    /// Picks an endpoint for a request, never one of `exclude` (the
    /// endpoints this request already failed on) unless nothing else is
    /// left. Prefers endpoints that are not ejected; when every one is,
    /// picks among all of them rather than refuse — the last endpoint is
    /// never ejected.
    pub(crate) fn pick(&self, exclude: &[usize]) -> Option<(usize, Arc<EndpointState>)> {
        let list = self.current.load();
        let n = list.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some((0, list[0].clone()));
        }
        let eligible = |i: usize| !exclude.contains(&i) && list[i].available(self.epoch);
        let chosen = self
            .choose(&list, &eligible)
            .or_else(|| self.choose(&list, &|i: usize| !exclude.contains(&i)))
            .or_else(|| self.choose(&list, &|_| true))?;
        Some((chosen, list[chosen].clone()))
    }

    fn choose(
        &self,
        list: &[Arc<EndpointState>],
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = list.len();
        match self.balancer {
            Balancer::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
            }
            Balancer::LeastRequest => self.two_choices(n, eligible, |i| list[i].in_flight() as f64),
            Balancer::PeakEwma(settings) => {
                let now = self.epoch.elapsed().as_nanos() as u64;
                self.two_choices(n, eligible, |i| list[i].ewma_cost(now, settings.decay))
            }
        }
    }

    /// Power of two choices: two distinct random eligible endpoints, the
    /// cheaper wins. Falls back to a scan when random draws keep hitting
    /// ineligible endpoints.
    fn two_choices(
        &self,
        n: usize,
        eligible: &dyn Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (a, b) = match (eligible(a), eligible(b)) {
            (true, true) => (a, b),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            (false, false) => {
                // Rare (most endpoints ejected): scan from a random start.
                let start = fastrand::usize(..n);
                let mut found = (0..n).map(|k| (start + k) % n).filter(|&i| eligible(i));
                let first = found.next()?;
                match found.next() {
                    Some(second) => (first, second),
                    None => return Some(first),
                }
            }
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::CircuitConfig;

    fn list(balancer: Balancer, n: usize) -> EndpointList {
        let list = EndpointList::new(balancer);
        let endpoints = (0..n)
            .map(|i| {
                let endpoint = Endpoint::new(format!("e{i}"), "127.0.0.1", 1000 + i as u16);
                Arc::new(
                    EndpointState::new(
                        format!("e{i}"),
                        endpoint.clone(),
                        endpoint.authority().parse().unwrap(),
                        CircuitBreaker::new(format!("e{i}"), CircuitConfig::default()),
                        list.initial_rtt(&[]),
                        1,
                    )
                    .unwrap(),
                )
            })
            .collect();
        list.publish(endpoints);
        list
    }

    #[test]
    fn every_balancer_spreads_sequential_requests_fairly() {
        for balancer in [
            Balancer::LeastRequest,
            Balancer::RoundRobin,
            Balancer::peak_ewma().into(),
        ] {
            let list = list(balancer, 3);
            let mut counts = [0usize; 3];
            for _ in 0..300 {
                let (i, endpoint) = list.pick(&[]).unwrap();
                let _guard = endpoint.start();
                endpoint.observe_rtt(
                    Duration::from_millis(1),
                    list.epoch(),
                    Duration::from_secs(10),
                );
                counts[i] += 1;
            }
            for count in counts {
                assert!(count >= 45, "{balancer:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let list = list(Balancer::LeastRequest, 2);
        let (_, busy) = list.pick(&[]).unwrap();
        let _held: Vec<_> = (0..10).map(|_| busy.start()).collect();
        for _ in 0..50 {
            let (_, chosen) = list.pick(&[]).unwrap();
            assert_ne!(chosen.id, busy.id);
        }
    }

    #[test]
    fn refused_endpoints_are_skipped_and_excluded_ones_avoided() {
        let list = list(Balancer::LeastRequest, 3);
        let snapshot = list.snapshot();
        snapshot[0].refused(list.epoch());
        for _ in 0..100 {
            let (i, _) = list.pick(&[1]).unwrap();
            assert_eq!(i, 2, "refused 0 and excluded 1 leave 2");
        }
        // Everything refused or excluded: still an answer, never none.
        snapshot[2].refused(list.epoch());
        assert!(list.pick(&[1]).is_some());
        snapshot[0].answered();
        assert_eq!(list.pick(&[1]).unwrap().0, 0);
    }

    #[test]
    fn a_new_ewma_endpoint_starts_from_its_peers() {
        let list = list(Balancer::peak_ewma().into(), 2);
        for endpoint in list.snapshot().iter() {
            endpoint.observe_rtt(
                Duration::from_millis(2),
                list.epoch(),
                Duration::from_secs(10),
            );
            endpoint.observe_rtt(
                Duration::from_millis(1),
                list.epoch(),
                Duration::from_secs(10),
            );
        }
        let start = list.initial_rtt(&list.snapshot());
        assert!(start <= Duration::from_millis(2), "{start:?}");
    }
}
