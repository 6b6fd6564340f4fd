//! Keeping an issuer's JWKS current, off the request path.
//!
//! One background task per JWKS, started by the layer's first use inside a
//! Tokio runtime, polls the document on an interval and on
//! demand (a token names an unknown `kid`, or its signature fails under a
//! known `kid`, whose key may have been rotated in place), with a minimum
//! interval between fetches so that tokens with random `kid`s or forged
//! signatures cannot make the gateway hammer the auth server. When the endpoint is down or returns garbage, the last
//! good keys stay in force. The request path only reads the current
//! [`KeySnapshot`](super::store::KeySnapshot) through an `ArcSwap`.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{keys::parse_jwks, store::KeyStore};
use crate::{client::HttpFetcher, deferred::DeferredTask};

/// Where an issuer publishes its keys.
#[derive(Debug, Clone)]
pub(crate) enum JwksLocation {
    /// The JWKS URL itself.
    Url(String),
    /// The issuer URL: the JWKS URL is read from
    /// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery
    /// 1.0 §4).
    Discovery(String),
}

/// Timing of JWKS refreshes.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::auth::JwksOptions;
///
/// let opts = JwksOptions::default()
///     .refresh_interval(Duration::from_secs(300))
///     .min_refetch_interval(Duration::from_secs(10))
///     .unknown_kid_wait(Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct JwksOptions {
    pub(crate) refresh_interval: Duration,
    pub(crate) min_refetch_interval: Duration,
    pub(crate) unknown_kid_wait: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            unknown_kid_wait: Duration::from_secs(1),
        }
    }
}

impl JwksOptions {
    /// How often the JWKS is fetched when nothing asks for it (default 5 min).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// The least time between two fetches of the same JWKS, whatever
    /// triggered them (default 10 s). Also the first retry delay after a
    /// failed fetch, doubling up to the refresh interval.
    pub fn min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    /// How long a request whose token names an unknown `kid` (or fails its
    /// signature check under a known one) waits for a refresh that it
    /// triggered, or that is already running, before it is refused
    /// (default 1 s; zero never waits). The request never fetches
    /// anything itself. While it waits it holds the inner service it was
    /// admitted to (and any capacity that service reserved in `poll_ready`).
    pub fn unknown_kid_wait(mut self, wait: Duration) -> Self {
        self.unknown_kid_wait = wait;
        self
    }
}

/// Counters of one JWKS, for metrics and tests.
#[derive(Debug, Default)]
pub(crate) struct JwksCounters {
    pub(crate) fetches: AtomicU64,
    pub(crate) failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Schedule {
    /// When the last fetch started.
    last_started: Option<Instant>,
    in_flight: bool,
    /// A token named an unknown key: fetch again as soon as the minimum
    /// interval allows.
    wanted: bool,
}

/// The request path's handle on a JWKS refresher.
pub(crate) struct Refresher {
    notify: Notify,
    schedule: Mutex<Schedule>,
    updated: watch::Sender<Option<Instant>>,
    shutdown: AtomicBool,
    /// A fetch has installed keys at least once.
    loaded: AtomicBool,
    options: JwksOptions,
    pub(crate) counters: JwksCounters,
}

impl Refresher {
    /// Whether a fetch has installed this JWKS's keys at least once.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Asks for a refetch because a token named an unknown key.
    ///
    /// The fetch runs as soon as the minimum interval since the last one
    /// allows — never sooner, so a burst of unknown kids costs one fetch.
    /// Returns a receiver that changes when a fetch completes if the caller
    /// should wait for it (a fetch is running, or the next one starts
    /// within `unknown_kid_wait`); `None` means refuse now.
    pub(crate) fn request(&self) -> Option<watch::Receiver<Option<Instant>>> {
        let receiver = self.updated.subscribe();
        let Ok(mut schedule) = self.schedule.lock() else {
            return None;
        };
        let now = Instant::now();
        let next = schedule
            .last_started
            .map_or(now, |t| t + self.options.min_refetch_interval);
        if !schedule.wanted {
            schedule.wanted = true;
            self.notify.notify_one();
        }
        let wait = self.options.unknown_kid_wait;
        let worth_waiting =
            !wait.is_zero() && (schedule.in_flight || next.saturating_duration_since(now) <= wait);
        worth_waiting.then_some(receiver)
    }

    pub(crate) fn wait(&self) -> std::time::Duration {
        self.options.unknown_kid_wait
    }

    fn begin(&self) {
        if let Ok(mut schedule) = self.schedule.lock() {
            schedule.in_flight = true;
            schedule.wanted = false;
            schedule.last_started = Some(Instant::now());
        }
    }

    /// Marks the fetch done and tells waiters when it started: a waiter
    /// that arrived before that instant has seen every key published
    /// before it arrived.
    fn end(&self) {
        let started = match self.schedule.lock() {
            Ok(mut schedule) => {
                schedule.in_flight = false;
                schedule.last_started
            }
            Err(_) => None,
        };
        self.updated.send_replace(started);
    }

    /// When the task should fetch next, given the delay it chose after the
    /// last fetch (refresh interval, or a back-off after a failure).
    fn next_fetch(&self, delay: Duration) -> Instant {
        let Ok(schedule) = self.schedule.lock() else {
            return Instant::now() + delay;
        };
        let last = schedule.last_started.unwrap_or_else(Instant::now);
        if schedule.wanted {
            last + self.options.min_refetch_interval.min(delay)
        } else {
            last + delay
        }
    }

    pub(crate) fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Makes the refresher of one issuer. Its task is deferred: it is spawned
/// by the first use of the layer inside a Tokio runtime (see
/// [`DeferredTask`]), so building the layer needs no runtime. The task
/// holds only a weak reference to the store and ends when the layer is
/// dropped.
pub(crate) fn refresher(
    issuer: String,
    location: JwksLocation,
    store: &Arc<KeyStore>,
    fetcher: HttpFetcher,
    options: JwksOptions,
    metrics: Option<&super::metrics::AuthMetrics>,
) -> (Arc<Refresher>, DeferredTask) {
    let (updated, _) = watch::channel(None);
    let refresher = Arc::new(Refresher {
        notify: Notify::new(),
        schedule: Mutex::new(Schedule {
            last_started: None,
            in_flight: true,
            wanted: false,
        }),
        updated,
        shutdown: AtomicBool::new(false),
        loaded: AtomicBool::new(false),
        options,
        counters: JwksCounters::default(),
    });
    let task = Task {
        metrics: metrics.map(|m| m.jwks(&issuer)),
        issuer,
        location,
        jwks_url: None,
        store: Arc::downgrade(store),
        fetcher,
        refresher: refresher.clone(),
    };
    (refresher, DeferredTask::new(move || task.run()))
}

struct Task {
    issuer: String,
    location: JwksLocation,
    jwks_url: Option<String>,
    store: Weak<KeyStore>,
    fetcher: HttpFetcher,
    refresher: Arc<Refresher>,
    metrics: Option<super::metrics::JwksMetrics>,
}

impl Task {
    async fn run(mut self) {
        let options = self.refresher.options;
        let mut failures: u32 = 0;
        loop {
            if self.refresher.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.refresher.begin();
            let outcome = self.fetch_once().await;
            self.refresher
                .counters
                .fetches
                .fetch_add(1, Ordering::Relaxed);
            let delay = match outcome {
                Ok(count) => {
                    failures = 0;
                    if let Some(metrics) = &self.metrics {
                        metrics.refreshed(true);
                    }
                    tracing::debug!(target: "tower_gateway::jwks", issuer = %self.issuer, keys = count, "JWKS refreshed");
                    options.refresh_interval
                }
                Err(Stop) => return,
                Err(FetchFailed(reason)) => {
                    failures = failures.saturating_add(1);
                    self.refresher
                        .counters
                        .failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(metrics) = &self.metrics {
                        metrics.refreshed(false);
                    }
                    tracing::warn!(target: "tower_gateway::jwks", issuer = %self.issuer, error = %reason, "JWKS refresh failed; keeping the last good keys");
                    let backoff = options
                        .min_refetch_interval
                        .max(Duration::from_millis(100))
                        .saturating_mul(1 << failures.min(16).saturating_sub(1));
                    backoff.min(options.refresh_interval)
                }
            };
            self.refresher.end();
            // Sleep until the next fetch is due; a request for a refetch
            // wakes the task to recompute that time, never to fetch early.
            loop {
                let next = self.refresher.next_fetch(delay);
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = self.refresher.notify.notified() => {}
                }
                if self.refresher.shutdown.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }

    async fn fetch_once(&mut self) -> Result<usize, Outcome> {
        let url = match (&self.location, &self.jwks_url) {
            (JwksLocation::Url(url), _) => url.clone(),
            (JwksLocation::Discovery(_), Some(url)) => url.clone(),
            (JwksLocation::Discovery(issuer), None) => {
                let url = self.discover(issuer).await?;
                self.jwks_url = Some(url.clone());
                url
            }
        };
        // A client span per fetch. Fetches run in the refresher's task, off
        // the request path, so each is a trace of its own.
        let span = tracing::info_span!(
            target: "tower_gateway::auth",
            "jwks",
            otel.name = "GET",
            otel.kind = "client",
            http.request.method = "GET",
            url.full = %url,
            error.type = tracing::field::Empty,
        );
        let fetched = tracing::Instrument::instrument(self.fetcher.get(&url), span.clone()).await;
        if fetched.is_err() {
            span.record("error.type", "fetch_failed");
        }
        let body = fetched.map_err(|e| FetchFailed(e.to_string()))?;
        let keys = parse_jwks(&body).map_err(FetchFailed)?;
        if keys.is_empty() {
            return Err(FetchFailed("JWKS holds no usable signing key".into()));
        }
        let count = keys.len();
        let store = self.store.upgrade().ok_or(Stop)?;
        store.install(keys);
        self.refresher.loaded.store(true, Ordering::Release);
        Ok(count)
    }

    async fn discover(&self, issuer: &str) -> Result<String, Outcome> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self
            .fetcher
            .get(&url)
            .await
            .map_err(|e| FetchFailed(format!("discovery: {e}")))?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| FetchFailed(format!("discovery document: {e}")))?;
        Ok(doc.jwks_uri)
    }
}

enum Outcome {
    Stop,
    FetchFailed(String),
}
use Outcome::{FetchFailed, Stop};
