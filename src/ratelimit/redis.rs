//! The distributed backend: one Lua script per decision, a breaker around
//! Redis, and a local memory of exhausted keys.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::clock::Clock;
use redis::{
    Cmd, ErrorKind, RedisError, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use super::{
    decision::{Decision, WindowState},
    limit::Limit,
    local::TokioClock,
    store::{Expiring, Sharded},
};

/// The Lua script every decision runs (see `gcra.lua` for its contract).
pub const SCRIPT: &str = include_str!("gcra.lua");

/// How the Redis backend talks to Redis and what it does when Redis fails.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::ratelimit::RedisConfig;
///
/// let config = RedisConfig::default()
///     .prefix("gw:rl:")
///     .timeout(Duration::from_millis(50))
///     .probe_interval(Duration::from_millis(250));
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    failure_threshold: u32,
    probe_interval: Duration,
    remember_exhausted: bool,
    max_exhausted_keys: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "rl:".to_owned(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(250),
            failure_threshold: 3,
            probe_interval: Duration::from_millis(250),
            remember_exhausted: true,
            max_exhausted_keys: 100_000,
        }
    }
}

impl RedisConfig {
    /// Prefix of every key (default `rl:`); must not contain `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a decision may wait for Redis, script reload included
    /// (default 100 ms). On timeout the layer applies its
    /// [`FailurePolicy`](super::FailurePolicy).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest one connection attempt may take (default 250 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Consecutive failures after which Redis is considered down and no
    /// longer called on every request (default 3).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// While Redis is down, how often one request probes it (default
    /// 250 ms): an outage costs at most one timeout per interval, and
    /// distributed limiting resumes within about one interval of Redis
    /// coming back.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Whether a key Redis refused is remembered locally until it may be
    /// admitted again, so a client hammering after a 429 costs no round
    /// trips (default on).
    ///
    /// A refusal charges nothing and other gateways can only push the
    /// admission time later, so the memory never refuses a request Redis
    /// would admit; it counts from when the request was sent, so it expires
    /// no later than Redis's own answer would change.
    pub fn remember_exhausted(mut self, on: bool) -> Self {
        self.remember_exhausted = on;
        self
    }

    /// At most about this many exhausted keys are remembered (default
    /// 100,000).
    pub fn max_exhausted_keys(mut self, max: usize) -> Self {
        self.max_exhausted_keys = max;
        self
    }
}

/// Why the Redis backend could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis is considered down; it is not called until the next probe.
    #[error("redis is down; waiting for the next probe")]
    Unavailable,
    /// The script's reply was not what it returns.
    #[error("unexpected reply from the rate-limit script")]
    Protocol,
    /// The configuration cannot work.
    #[error("invalid redis configuration: {0}")]
    Config(&'static str),
}

/// Counters of the backend's work, for tests, benchmarks and dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Decisions sent to Redis.
    pub calls: u64,
    /// Calls that failed (errors and timeouts).
    pub errors: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Decisions not sent because Redis is considered down.
    pub short_circuited: u64,
    /// Refusals answered from the memory of exhausted keys.
    pub remembered: u64,
    /// Times the script had to be sent in full (`NOSCRIPT`).
    pub script_loads: u64,
}

/// Rate-limit state in Redis, shared by every gateway that uses the same
/// Redis (single node or Cluster).
///
/// Each decision is one `EVALSHA` of [`SCRIPT`] (falling back to `EVAL`,
/// which also caches the script, on `NOSCRIPT`), which checks and updates
/// every window of the key atomically with Redis's own clock. The keys of
/// one decision share a hash tag, `{prefix}{<key>}:<window>`, so they live
/// in one Cluster slot. The connection is multiplexed: concurrent decisions
/// are pipelined on it rather than queued.
///
/// Every call is bounded by [`RedisConfig::timeout`]. After
/// [`RedisConfig::failure_threshold`] consecutive failures a small breaker
/// stops calling Redis, and one request per
/// [`RedisConfig::probe_interval`] probes it; the first success closes it.
/// The connection reconnects by itself.
///
/// Cheap to clone; clones share the connection, breaker and counters.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_gateway::ratelimit::{
///     Consumer, FailurePolicy, Limit, RateLimitLayer, RedisBackend, RedisConfig,
/// };
///
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379/", RedisConfig::default()).await?;
/// let layer = RateLimitLayer::builder()
///     .key(Consumer::subject())
///     .limit(Limit::new().per_second(5).per_hour(1000))
///     .redis(redis)
///     // Three gateways: while Redis is down, each enforces a third.
///     .on_backend_error(FailurePolicy::Local)
///     .fallback_share(1.0 / 3.0)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    sha: String,
    config: RedisConfig,
    clock: TokioClock,
    breaker: Breaker,
    exhausted: Option<Sharded<Remembered>>,
    stats: Counters,
}

#[derive(Clone)]
enum Connection {
    Single(Arc<LazyManager>),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query(&mut self, cmd: &Cmd) -> Result<Vec<i64>, RedisError> {
        match self {
            Self::Single(lazy) => cmd.query_async(&mut lazy.manager()?).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A connection manager made by the first decision, inside the runtime
/// that serves it: redis-rs spawns the manager's task when it is made, so
/// making it at `connect_lazy` would need a runtime there.
struct LazyManager {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: OnceLock<ConnectionManager>,
    making: Mutex<()>,
}

impl LazyManager {
    /// The manager, made on the first call (inside a Tokio runtime);
    /// after that, one atomic load and a clone of its handle.
    fn manager(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(manager) = self.manager.get() {
            return Ok(manager.clone());
        }
        let _making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = self.manager.get() {
            return Ok(manager.clone());
        }
        let manager =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
        Ok(self.manager.get_or_init(|| manager).clone())
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisBackend")
            .field("connection", &kind)
            .field("config", &self.inner.config)
            .field("available", &self.is_available())
            .finish()
    }
}

/// What the layer gets back when it asks for a decision.
// Returned once per request and matched at once; boxing the ready decision
// would allocate on the remembered-refusal path, which exists to be cheap.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Begin {
    /// Decided without a round trip (remembered) or not callable now.
    Ready(Result<Decision, BackendError>),
    /// A round trip is under way.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>),
}

impl RedisBackend {
    /// Connects to one Redis server (`redis://host:port/db`), waiting for
    /// the first connection.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        let backend = Self::connect_lazy(url, config)?;
        let wait = backend.inner.config.connect_timeout * 3;
        if let Connection::Single(lazy) = &backend.inner.connection {
            let mut manager = lazy.manager()?;
            tokio::time::timeout(wait, redis::cmd("PING").query_async::<()>(&mut manager))
                .await
                .map_err(|_| BackendError::Timeout(wait))??;
        }
        Ok(backend)
    }

    /// Connects to one Redis server on first use: the gateway starts even
    /// while Redis is down (the failure policy applies until it is up).
    /// Needs no Tokio runtime: the connection is made by the first
    /// decision, inside the runtime that serves it.
    pub fn connect_lazy(url: &str, config: RedisConfig) -> Result<Self, BackendError> {
        validate(&config)?;
        let client = redis::Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            // Reconnect attempts stay short, so a probe after Redis returns
            // finds a fresh attempt rather than a long backoff.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let lazy = LazyManager {
            client,
            config: manager_config,
            manager: OnceLock::new(),
            making: Mutex::new(()),
        };
        Ok(Self::with_connection(
            Connection::Single(Arc::new(lazy)),
            config,
        ))
    }

    /// Connects to a Redis Cluster through any of its `nodes`
    /// (`redis://host:port`).
    pub async fn cluster<I, S>(nodes: I, config: RedisConfig) -> Result<Self, BackendError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        validate(&config)?;
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.timeout)
            .build()?;
        let wait = config.connect_timeout * 3;
        let connection = tokio::time::timeout(wait, client.get_async_connection())
            .await
            .map_err(|_| BackendError::Timeout(wait))??;
        Ok(Self::with_connection(
            Connection::Cluster(connection),
            config,
        ))
    }

    fn with_connection(connection: Connection, config: RedisConfig) -> Self {
        let exhausted = config
            .remember_exhausted
            .then(|| Sharded::new(config.max_exhausted_keys));
        Self {
            inner: Arc::new(Inner {
                connection,
                sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
                breaker: Breaker::new(&config),
                clock: TokioClock::new(),
                exhausted,
                stats: Counters::default(),
                config,
            }),
        }
    }

    /// Decides one request of `key` under `limit` (which should be
    /// [valid](Limit::validate)).
    pub async fn check(&self, key: &str, limit: &Limit) -> Result<Decision, BackendError> {
        match self.begin(key, limit) {
            Begin::Ready(result) => result,
            Begin::Pending(future) => future.await,
        }
    }

    /// Whether Redis is considered up (the breaker is closed).
    pub fn is_available(&self) -> bool {
        !self.inner.breaker.open.load(Ordering::Acquire)
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.stats;
        RedisStats {
            calls: c.calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            short_circuited: c.short_circuited.load(Ordering::Relaxed),
            remembered: c.remembered.load(Ordering::Relaxed),
            script_loads: c.script_loads.load(Ordering::Relaxed),
        }
    }

    /// The Redis keys holding the state of `key` under `limit`, one per
    /// window (for inspection and tests).
    pub fn redis_keys(&self, key: &str, limit: &Limit) -> Vec<String> {
        let prefix = &self.inner.config.prefix;
        limit
            .windows()
            .iter()
            .map(|w| {
                format!(
                    "{prefix}{{{key}}}:{}:{}:{}",
                    w.name(),
                    w.t_ns() / 1_000,
                    w.burst_size()
                )
            })
            .collect()
    }

    pub(crate) fn begin(&self, key: &str, limit: &Limit) -> Begin {
        let inner = &self.inner;
        let now = inner.now();
        if let Some(exhausted) = &inner.exhausted {
            let shard = exhausted.shard(key, now);
            if let Some(remembered) = shard.map.get(key)
                && remembered.limit_id == limit.id()
                && remembered.until > now
            {
                inner.stats.remembered.fetch_add(1, Ordering::Relaxed);
                return Begin::Ready(Ok(remembered.decision(now)));
            }
        }
        let Some(admission) = inner.breaker.admit(now) else {
            inner.stats.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Begin::Ready(Err(BackendError::Unavailable));
        };
        let keys = self.redis_keys(key, limit);
        let args: Vec<u64> = limit
            .windows()
            .iter()
            .flat_map(|w| [w.t_ns() / 1_000, w.tau_ns() / 1_000])
            .collect();
        let remember = inner
            .exhausted
            .is_some()
            .then(|| (key.to_owned(), limit.id()));
        let guard = ProbeGuard {
            inner: self.inner.clone(),
            probe: admission,
            settled: false,
        };
        // A client span for the round trip, under the request's span; none
        // for a request that has no span (not sampled, or no tracing).
        let span = if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                target: "tower_gateway::ratelimit",
                "redis",
                otel.name = "EVALSHA",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "EVALSHA",
            )
        };
        Begin::Pending(Box::pin(tracing::Instrument::instrument(
            decide(guard, keys, args, remember),
            span,
        )))
    }
}

fn validate(config: &RedisConfig) -> Result<(), BackendError> {
    if config.prefix.contains(['{', '}']) {
        return Err(BackendError::Config(
            "the key prefix must not contain braces",
        ));
    }
    if config.timeout.is_zero() || config.connect_timeout.is_zero() {
        return Err(BackendError::Config("timeouts must be positive"));
    }
    Ok(())
}

/// One round trip: run the script within the timeout, tell the breaker how
/// it went, and remember the key if it is exhausted.
async fn decide(
    mut guard: ProbeGuard,
    keys: Vec<String>,
    args: Vec<u64>,
    remember: Option<(String, u64)>,
) -> Result<Decision, BackendError> {
    let inner = guard.inner.clone();
    let sent = inner.now();
    inner.stats.calls.fetch_add(1, Ordering::Relaxed);
    let mut connection = inner.connection.clone();
    let timeout = inner.config.timeout;
    let result = match tokio::time::timeout(
        timeout,
        run_script(&inner, &mut connection, &keys, &args),
    )
    .await
    {
        Ok(Ok(reply)) => parse(&reply, keys.len()),
        Ok(Err(error)) => Err(BackendError::Redis(error)),
        Err(_) => {
            inner.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            Err(BackendError::Timeout(timeout))
        }
    };
    if let Err(error) = &result {
        inner.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "tower_gateway::ratelimit", %error, "redis decision failed");
    }
    guard.settle(result.is_ok());
    if let (Ok(decision), Some((key, limit_id)), Some(exhausted)) =
        (&result, remember, &inner.exhausted)
        && !decision.allowed
    {
        let now = inner.now();
        let mut shard = exhausted.shard(&key, now);
        let reset_at = |d: Duration| sent.saturating_add(nanos(d));
        let remembered = Remembered {
            limit_id,
            until: reset_at(decision.retry_after),
            windows: decision
                .windows()
                .iter()
                .map(|w| (w.remaining, reset_at(w.reset)))
                .collect(),
        };
        shard.map.insert(key.into(), remembered);
    }
    result
}

/// `EVALSHA`, and on `NOSCRIPT` (a restarted or flushed server, a new
/// Cluster node) `EVAL`, which runs the script and caches it.
async fn run_script(
    inner: &Inner,
    connection: &mut Connection,
    keys: &[String],
    args: &[u64],
) -> Result<Vec<i64>, RedisError> {
    let script_cmd = |verb: &str, body: &str| {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    match connection.query(&script_cmd("EVALSHA", &inner.sha)).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            inner.stats.script_loads.fetch_add(1, Ordering::Relaxed);
            connection.query(&script_cmd("EVAL", SCRIPT)).await
        }
        other => other,
    }
}

fn parse(reply: &[i64], windows: usize) -> Result<Decision, BackendError> {
    if reply.len() != 2 + 2 * windows {
        return Err(BackendError::Protocol);
    }
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    Ok(Decision {
        allowed: reply[0] == 1,
        retry_after: micros(reply[1]),
        windows: reply[2..]
            .chunks_exact(2)
            .map(|pair| WindowState {
                remaining: u64::try_from(pair[0]).unwrap_or(0),
                reset: micros(pair[1]),
            })
            .collect(),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.now().as_u64()
    }
}

/// A key Redis refused, remembered until it may be admitted again.
struct Remembered {
    limit_id: u64,
    until: u64,
    /// Remaining and reset time of each window.
    windows: Vec<(u64, u64)>,
}

impl Expiring for Remembered {
    fn expires_at(&self) -> u64 {
        self.until
    }
}

impl Remembered {
    fn decision(&self, now: u64) -> Decision {
        Decision {
            allowed: false,
            retry_after: Duration::from_nanos(self.until.saturating_sub(now)),
            windows: self
                .windows
                .iter()
                .map(|&(remaining, reset_at)| WindowState {
                    remaining,
                    reset: Duration::from_nanos(reset_at.saturating_sub(now)),
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    short_circuited: AtomicU64,
    remembered: AtomicU64,
    script_loads: AtomicU64,
}

/// A small breaker around Redis: closed, it lets every call through; after
/// `threshold` consecutive failures it opens, and then lets one probe
/// through per interval until one succeeds. Lock-free.
struct Breaker {
    threshold: u32,
    interval: u64,
    failures: AtomicU32,
    open: AtomicBool,
    next_probe: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    fn new(config: &RedisConfig) -> Self {
        Self {
            threshold: config.failure_threshold,
            interval: nanos(config.probe_interval),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// `Some(is_probe)` if a call may go to Redis now.
    fn admit(&self, now: u64) -> Option<bool> {
        if !self.open.load(Ordering::Acquire) {
            return Some(false);
        }
        if now < self.next_probe.load(Ordering::Acquire) {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| true)
    }

    fn record(&self, probe: bool, ok: bool, now: u64) {
        if ok {
            self.failures.store(0, Ordering::Release);
            if self.open.swap(false, Ordering::AcqRel) {
                tracing::info!(target: "tower_gateway::ratelimit", "redis is back; distributed rate limiting resumes");
            }
        } else if probe {
            self.next_probe
                .store(now.saturating_add(self.interval), Ordering::Release);
        } else {
            let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= self.threshold {
                self.next_probe
                    .store(now.saturating_add(self.interval), Ordering::Release);
                if !self.open.swap(true, Ordering::AcqRel) {
                    tracing::warn!(target: "tower_gateway::ratelimit", failures, "redis is failing; applying the failure policy until a probe succeeds");
                }
            }
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }
}

/// Reports the outcome of a call to the breaker exactly once; a call
/// dropped before it finished (a cancelled request) gives its probe slot
/// back without counting.
struct ProbeGuard {
    inner: Arc<Inner>,
    probe: bool,
    settled: bool,
}

impl ProbeGuard {
    fn settle(&mut self, ok: bool) {
        self.settled = true;
        let now = self.inner.now();
        self.inner.breaker.record(self.probe, ok, now);
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.inner.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breaker::new(
            &RedisConfig::default()
                .failure_threshold(2)
                .probe_interval(Duration::from_nanos(100)),
        );
        assert_eq!(b.admit(0), Some(false));
        b.record(false, false, 0);
        assert_eq!(b.admit(0), Some(false));
        b.record(false, false, 10);
        // Open: nothing until the probe time, then exactly one probe.
        assert_eq!(b.admit(50), None);
        assert_eq!(b.admit(110), Some(true));
        assert_eq!(b.admit(111), None);
        b.record(true, false, 120);
        assert_eq!(b.admit(150), None);
        assert_eq!(b.admit(220), Some(true));
        b.record(true, true, 230);
        assert_eq!(b.admit(231), Some(false));
    }

    #[test]
    fn script_reply_is_checked() {
        assert!(parse(&[1, 0, 4], 1).is_err());
        let d = parse(&[0, 1_500_000, 0, 2_000_000, 7, 10], 2).unwrap();
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Duration::from_millis(1500));
        assert_eq!(d.windows()[1].remaining, 7);
        assert_eq!(d.windows()[1].reset, Duration::from_micros(10));
        // Negative numbers (a corrupted reply) do not panic.
        assert_eq!(
            parse(&[1, -5, -1, -1], 1).unwrap().windows()[0].remaining,
            0
        );
    }
}
