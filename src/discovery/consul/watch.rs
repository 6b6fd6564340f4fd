//! The blocking-query loop that keeps one service's endpoints current.
//!
//! It follows Consul's "Blocking Queries" documentation, section
//! "Implementation Details":
//! - the `X-Consul-Index` of each answer is the `index` of the next query;
//! - an index lower than the previous one resets the loop (index 0);
//! - an index below 1 (0, missing, unreadable) is used as 1, so the next
//!   query blocks instead of returning at once forever;
//! - the loop is rate limited with a token bucket of burst 2, so that it
//!   proceeds without waiting in the happy case and degrades into polling
//!   when answers churn;
//!
//! and, for failures, backs off exponentially with jitter. A blocking query
//! may take `wait` plus up to `wait / 16` of jitter that Consul adds, so its
//! timeout is longer than that.

use std::{
    collections::BTreeMap,
    fmt,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use http::{Method, StatusCode};
use tokio::{sync::watch, time::Instant};
use tower::discover::Change;

use super::api::{ConsulClient, ConsulError, Query, parse_health, path_segment, status_error};
use crate::deferred::DeferredTask;
use crate::discovery::{
    Changes, DiscoveryMetrics, Endpoint, EndpointWatch, ServiceMetrics, Snapshot,
};

/// Longest `wait` Consul honours ("This is limited to 10 minutes").
pub(super) const MAX_WAIT: Duration = Duration::from_secs(600);
/// Queries allowed back to back before the rate limit applies (Consul's
/// docs suggest a token bucket with a burst of 2).
pub(super) const BURST: u32 = 2;

/// Configures the watch of one service; made by [`ConsulClient::watch`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::discovery::consul::ConsulClient;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let consul = ConsulClient::new("127.0.0.1:8500")?;
/// let orders = consul
///     .watch("orders")
///     .tag("v2")
///     .wait(Duration::from_secs(60))
///     .min_query_interval(Duration::from_secs(2))
///     .retry_backoff(Duration::from_secs(1), Duration::from_secs(30))
///     .spawn()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConsulWatchBuilder {
    client: ConsulClient,
    service: String,
    tags: Vec<String>,
    filter: Option<String>,
    datacenter: Option<String>,
    wait: Duration,
    min_query_interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
    metrics: Option<DiscoveryMetrics>,
}

impl ConsulWatchBuilder {
    pub(super) fn new(client: ConsulClient, service: String) -> Self {
        Self {
            client,
            service,
            tags: Vec::new(),
            filter: None,
            datacenter: None,
            wait: Duration::from_secs(60),
            min_query_interval: Duration::from_secs(2),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            metrics: None,
        }
    }

    /// Only instances carrying `tag` (Consul's `tag` parameter; repeated,
    /// an instance must carry every tag; Consul compares tags without
    /// regard to case). Consul marks `tag` deprecated in favour of
    /// [`filter`](Self::filter) but every released version still honours it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Several [`tag`](Self::tag)s at once.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// A Consul filter expression (`filter`), for example
    /// `"v2" in Service.Tags and Service.Meta.az == "b"`.
    pub fn filter(mut self, expression: impl Into<String>) -> Self {
        self.filter = Some(expression.into());
        self
    }

    /// The datacenter to watch (`dc`), instead of the client's.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// How long one blocking query may wait for a change (default 60 s;
    /// between 1 s and Consul's limit of 10 min). Shorter waits confirm the
    /// set more often at the cost of more requests.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_secs(1), MAX_WAIT);
        self
    }

    /// The sustained rate limit of the query loop: after a burst of two,
    /// at most one query per `interval` (default 2 s). Only a fast-changing
    /// service meets it; a change after a quiet period is seen at once.
    pub fn min_query_interval(mut self, interval: Duration) -> Self {
        self.min_query_interval = interval;
        self
    }

    /// Delay after a failed query: `min` after the first failure, doubling
    /// up to `max` (defaults 1 s and 30 s), each with jitter so gateways
    /// that lost Consul together do not return together.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_min);
        self
    }

    /// Reports the endpoint count and the age of the data to `metrics`.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Makes the watch. Needs no Tokio runtime: called inside one, it
    /// starts the query loop at once; called outside, the loop starts the
    /// first time the watch is read inside one — the first request of a
    /// proxy `Upstream` built on it, the first poll of its change stream,
    /// [`wait_for_sync`](ConsulDiscoveryService::wait_for_sync).
    ///
    /// Until Consul's first answer the set is empty and marked stale.
    pub fn spawn(self) -> Result<ConsulDiscoveryService, ConsulError> {
        let mut query = Query::default();
        query.push("passing", "true");
        if let Some(dc) = self.datacenter.as_deref().or(self.client.datacenter()) {
            query.push("dc", dc);
        }
        for tag in &self.tags {
            query.push("tag", tag);
        }
        if let Some(filter) = &self.filter {
            query.push("filter", filter);
        }
        self.client.tenancy(&mut query);

        let mut initial = Snapshot::new(std::iter::empty());
        initial.stale = true;
        let (tx, rx) = watch::channel(Arc::new(initial));
        let (stop, _) = watch::channel(false);
        let control = Arc::new(Control {
            service: self.service.clone().into(),
            stop,
        });
        let watcher = Watcher {
            path: format!(
                "/v1/health/service/{}?{}",
                path_segment(&self.service),
                query.as_str()
            ),
            client: self.client,
            wait: self.wait,
            min_query_interval: self.min_query_interval,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            metrics: self.metrics.map(|m| m.service(&self.service)),
            tx,
            control: control.clone(),
        };
        Ok(ConsulDiscoveryService::from_parts(
            EndpointWatch::deferred(rx, DeferredTask::new(move || watcher.run())),
            control,
        ))
    }
}

/// What the handles share with their watcher task.
struct Control {
    service: Arc<str>,
    stop: watch::Sender<bool>,
}

/// The healthy instances of one Consul service, kept current by one
/// background blocking-query loop.
///
/// As a [`Stream`] of [`Change`]s it is a
/// [`Discover`](tower::discover::Discover) for a balancer. Every clone is
/// a new stream over the same watcher (starting with an `Insert` for each
/// current instance), and [`watch`](Self::watch) gives the shared view to
/// anything else (metrics, health pages) — one query loop per service
/// however many consumers.
///
/// When Consul is unreachable or answers with an error or garbage, the
/// last known set stays in force, marked stale, and its age is reported
/// to the metrics. An empty answer from Consul is real (every
/// instance is gone or failing) and is applied.
///
/// The watcher stops when [`stop`](Self::stop) is called, or when every
/// handle and every [`EndpointWatch`] taken from it are dropped.
pub struct ConsulDiscoveryService {
    watch: EndpointWatch,
    changes: Changes,
    control: Arc<Control>,
}

impl ConsulDiscoveryService {
    fn from_parts(watch: EndpointWatch, control: Arc<Control>) -> Self {
        Self {
            changes: watch.changes(),
            watch,
            control,
        }
    }

    /// The service name being watched.
    pub fn service(&self) -> &str {
        &self.control.service
    }

    /// The shared view of the endpoints (current snapshot, change stream).
    pub fn watch(&self) -> EndpointWatch {
        self.watch.clone()
    }

    /// Stops the watcher for every handle: the last set stays readable,
    /// marked stale, and every change stream ends.
    pub fn stop(&self) {
        self.control.stop.send_replace(true);
    }

    /// Waits until Consul has confirmed the current set (its first answer,
    /// or the first after a failure); false if that takes longer than
    /// `timeout` or the watcher stopped.
    pub async fn wait_for_sync(&self, timeout: Duration) -> bool {
        let mut rx = self.watch.subscribe();
        let synced = rx.wait_for(|snapshot| !snapshot.stale);
        matches!(tokio::time::timeout(timeout, synced).await, Ok(Ok(_)))
    }
}

impl Clone for ConsulDiscoveryService {
    fn clone(&self) -> Self {
        Self::from_parts(self.watch.clone(), self.control.clone())
    }
}

impl fmt::Debug for ConsulDiscoveryService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.watch.current();
        f.debug_struct("ConsulDiscoveryService")
            .field("service", &self.control.service)
            .field("endpoints", &current.endpoints.len())
            .field("stale", &current.stale)
            .finish()
    }
}

impl Stream for ConsulDiscoveryService {
    type Item = Result<Change<String, Endpoint>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.changes).poll_next(cx)
    }
}

/// The background task of one watch.
struct Watcher {
    client: ConsulClient,
    /// `/v1/health/service/<name>?passing=true&…`, without index and wait.
    path: String,
    wait: Duration,
    min_query_interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
    metrics: Option<ServiceMetrics>,
    tx: watch::Sender<Arc<Snapshot>>,
    control: Arc<Control>,
}

/// One successful answer.
struct Answer {
    index: Option<u64>,
    endpoints: BTreeMap<String, Endpoint>,
}

impl Watcher {
    async fn run(self) {
        let mut stop = self.control.stop.subscribe();
        let mut index = BlockingIndex::default();
        let mut limiter = RateLimit::new(self.min_query_interval, BURST);
        let mut failures: u32 = 0;
        loop {
            let delay = limiter.acquire(Instant::now());
            if !delay.is_zero() && !self.pause(delay, &mut stop).await {
                break;
            }
            let answer = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                () = self.tx.closed() => break,
                answer = self.query(index.param()) => answer,
            };
            match answer {
                Ok(answer) => {
                    failures = 0;
                    index.observe(answer.index);
                    self.publish(answer.endpoints);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    // Start over with a plain read once Consul answers
                    // again: it may have restarted with lower indexes, and a
                    // query at our old index would then block for a whole
                    // `wait` before the reset rule could apply.
                    index.reset();
                    self.fail(&error);
                    let delay = backoff(failures, self.retry_min, self.retry_max);
                    if !self.pause(delay, &mut stop).await {
                        break;
                    }
                }
            }
        }
        // The set is no longer maintained: say so to readers of the
        // current snapshot, but without notifying receivers — the sender
        // drops right after, and a change stream woken by a value it has not
        // seen on a closed channel would spin instead of ending (see
        // `Changes::poll_next`).
        self.tx.send_if_modified(|current| {
            if !current.stale {
                *current = Arc::new(Snapshot {
                    endpoints: current.endpoints.clone(),
                    confirmed_at: current.confirmed_at,
                    stale: true,
                });
            }
            false
        });
        tracing::debug!(target: "tower_gateway::consul", service = %self.control.service, "consul watch stopped");
    }

    /// Sleeps for `delay`; false if the watch should end instead.
    async fn pause(&self, delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => false,
            () = self.tx.closed() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    async fn query(&self, index: Option<u64>) -> Result<Answer, ConsulError> {
        let (path, timeout) = match index {
            Some(index) => (
                format!(
                    "{}&index={index}&wait={}ms",
                    self.path,
                    self.wait.as_millis()
                ),
                // Consul adds up to wait/16 to the wait it was given.
                self.wait + self.wait / 16 + self.client.request_timeout(),
            ),
            None => (self.path.clone(), self.client.request_timeout()),
        };
        // A client span per query (a blocking one lasts up to `wait`); the
        // watch runs in a task of its own, so each is a trace of its own.
        let span = tracing::info_span!(
            target: "tower_gateway::consul",
            "consul",
            otel.name = "GET /v1/health/service",
            otel.kind = "client",
            http.request.method = "GET",
            gateway.service = %self.control.service,
            gateway.consul.blocking = index.is_some(),
            http.response.status_code = tracing::field::Empty,
        );
        let fetched = tracing::Instrument::instrument(
            self.client.send(Method::GET, &path, None, timeout),
            span.clone(),
        )
        .await?;
        span.record(
            "http.response.status_code",
            i64::from(fetched.status.as_u16()),
        );
        if fetched.status != StatusCode::OK {
            return Err(status_error(&fetched));
        }
        let header = |name: &str| {
            fetched
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let index = header("x-consul-index").and_then(|v| v.parse::<u64>().ok());
        if header("x-consul-results-filtered-by-acls") == Some("true") {
            tracing::warn!(
                target: "tower_gateway::consul", service = %self.control.service,
                "consul left out instances the ACL token may not read"
            );
        }
        let endpoints = parse_health(&fetched.body)?;
        Ok(Answer { index, endpoints })
    }

    fn publish(&self, endpoints: BTreeMap<String, Endpoint>) {
        let count = endpoints.len();
        let confirmed_at = Instant::now();
        // Receivers are woken only when the set (or the stale flag)
        // changed; an unchanged answer still refreshes `confirmed_at`.
        self.tx.send_if_modified(|current| {
            let changed = current.stale || current.endpoints != endpoints;
            *current = Arc::new(Snapshot {
                endpoints,
                confirmed_at,
                stale: false,
            });
            changed
        });
        let service = &*self.control.service;
        if let Some(metrics) = &self.metrics {
            metrics.endpoints(count);
            metrics.staleness(Duration::ZERO);
        }
        tracing::trace!(target: "tower_gateway::consul", %service, endpoints = count, "consul answer applied");
    }

    fn fail(&self, error: &ConsulError) {
        let age = self.mark_stale();
        let service = &*self.control.service;
        if let Some(metrics) = &self.metrics {
            metrics.staleness(age);
        }
        tracing::warn!(
            target: "tower_gateway::consul", %service, %error, age_secs = age.as_secs(),
            "consul query failed; keeping the last known endpoints"
        );
    }

    /// Marks the current set stale (keeping it and its `confirmed_at`) and
    /// returns its age.
    fn mark_stale(&self) -> Duration {
        let mut age = Duration::ZERO;
        self.tx.send_if_modified(|current| {
            age = current.age();
            if current.stale {
                return false;
            }
            *current = Arc::new(Snapshot {
                endpoints: current.endpoints.clone(),
                confirmed_at: current.confirmed_at,
                stale: true,
            });
            true
        });
        age
    }
}

/// The `index` of the next blocking query, following Consul's rules.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockingIndex(Option<u64>);

impl BlockingIndex {
    /// `None`: the next query is a plain read (no `index`, no `wait`).
    pub(super) fn param(self) -> Option<u64> {
        self.0
    }

    /// Takes the `X-Consul-Index` of an answer (`None` when missing or
    /// unreadable).
    pub(super) fn observe(&mut self, returned: Option<u64>) {
        let returned = returned.unwrap_or(0);
        let next = match self.0 {
            // "Reset the index if it goes backwards."
            Some(previous) if returned < previous => 0,
            _ => returned,
        };
        // "Sanity check index is greater than zero": an index of 0 never
        // blocks; 1 is always safe.
        self.0 = Some(next.max(1));
    }

    pub(super) fn reset(&mut self) {
        self.0 = None;
    }
}

/// A token bucket (as GCRA: one theoretical arrival time) allowing `burst`
/// queries back to back, then one per `interval`.
#[derive(Debug)]
pub(super) struct RateLimit {
    interval: Duration,
    tolerance: Duration,
    next: Option<Instant>,
}

impl RateLimit {
    pub(super) fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            next: None,
        }
    }

    /// Takes a token for a query about to start at `now`; returns how long
    /// to wait before starting it.
    pub(super) fn acquire(&mut self, now: Instant) -> Duration {
        let tat = self.next.map_or(now, |t| t.max(now));
        let wait = tat.duration_since(now).saturating_sub(self.tolerance);
        self.next = Some(tat + self.interval);
        wait
    }
}

/// Exponential backoff from `min` doubling to `max`, with "equal jitter":
/// half of the delay is fixed, half random, so it never collapses to zero
/// and gateways that failed together spread out.
pub(super) fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let delay = min.saturating_mul(1 << doublings).min(max);
    let half = delay / 2;
    half + jitter(delay - half)
}

/// A uniformly random duration in `0..=max`.
fn jitter(max: Duration) -> Duration {
    let span = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random_u64() % span.saturating_add(1))
}

/// A cheap random number: `RandomState` is seeded from the OS once per
/// thread and its keys change with every instance; a counter adds to it.
/// Good enough to spread retries, not for anything secret.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consul_blocking_rules() {
        let mut index = BlockingIndex::default();
        assert_eq!(index.param(), None, "the first query is a plain read");
        index.observe(Some(42));
        assert_eq!(index.param(), Some(42));
        index.observe(Some(42));
        assert_eq!(index.param(), Some(42), "a timeout keeps the index");
        index.observe(Some(50));
        assert_eq!(index.param(), Some(50));
        index.observe(Some(7));
        assert_eq!(
            index.param(),
            Some(1),
            "backwards resets to 0, used as 1 so the next query cannot spin"
        );
        index.observe(Some(7));
        assert_eq!(index.param(), Some(7));
        index.observe(Some(0));
        assert_eq!(index.param(), Some(1), "a zero index is never sent");
        index.observe(None);
        assert_eq!(index.param(), Some(1), "a missing index is treated as 0");
        index.reset();
        assert_eq!(index.param(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_allows_a_burst_of_two_then_one_per_interval() {
        let interval = Duration::from_secs(2);
        let mut limit = RateLimit::new(interval, 2);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..6 {
            let wait = limit.acquire(Instant::now());
            tokio::time::sleep(wait).await;
            starts.push(start.elapsed());
        }
        assert_eq!(starts[0], Duration::ZERO);
        assert_eq!(starts[1], Duration::ZERO);
        assert_eq!(starts[2], Duration::from_secs(2));
        assert_eq!(starts[3], Duration::from_secs(4));
        assert_eq!(starts[5], Duration::from_secs(8));

        // After a quiet period the burst is available again.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(limit.acquire(Instant::now()), Duration::ZERO);
        assert_eq!(limit.acquire(Instant::now()), Duration::ZERO);
        assert_eq!(limit.acquire(Instant::now()), interval);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            for (failures, nominal) in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (40, 30)] {
                let nominal = Duration::from_secs(nominal);
                let delay = backoff(failures, min, max);
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "{failures}: {delay:?}"
                );
            }
        }
        // Jitter actually varies.
        let samples: std::collections::BTreeSet<_> =
            (0..50).map(|_| backoff(6, min, max)).collect();
        assert!(samples.len() > 40);

        // A paused clock shows the schedule a failing watcher sleeps by.
        let start = Instant::now();
        for failures in 1..=8 {
            tokio::time::sleep(backoff(failures, min, max)).await;
        }
        let slept = start.elapsed();
        assert!(slept >= Duration::from_secs(1 + 2 + 4 + 8 + 16 + 30 * 3) / 2);
        assert!(slept <= Duration::from_secs(1 + 2 + 4 + 8 + 16 + 30 * 3));
    }
}
