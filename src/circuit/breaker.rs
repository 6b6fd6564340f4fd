use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{CircuitConfig, Outcome, Window};

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A few probe calls test whether the upstream has recovered.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open` (metric label values).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// A call refused because the circuit is open (or half-open with every
/// probe slot taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// A transition, as passed to [`CircuitBreaker::on_transition`] callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
}

type Callback = Arc<dyn Fn(&str, Transition) + Send + Sync>;

/// A circuit breaker: the state machine, independent of any service.
///
/// Admission in the closed state is one atomic load; recording an outcome
/// takes a short, uncontended-in-practice mutex. Time comes from Tokio's
/// clock, so tests drive it with paused time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use tower_gateway::circuit::{CircuitBreaker, CircuitConfig, CircuitState, Outcome};
///
/// let breaker = CircuitBreaker::new("payments", CircuitConfig::default().consecutive_failures(Some(2)));
/// for _ in 0..2 {
///     breaker.try_acquire().unwrap().record(Outcome::Failure);
/// }
/// assert_eq!(breaker.state(), CircuitState::Open);
/// assert!(breaker.try_acquire().is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    config: CircuitConfig,
    state: AtomicU8,
    machine: Mutex<Machine>,
    changes: watch::Sender<CircuitState>,
    wake: Arc<Notify>,
    callbacks: Mutex<Vec<Callback>>,
    group: Option<EjectionGroup>,
}

struct Machine {
    state: CircuitState,
    window: Rolling,
    consecutive_failures: u32,
    open_until: Instant,
    reopens: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    holds_ejection: bool,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the label of its metrics and logs).
    pub fn new(name: impl Into<Arc<str>>, config: CircuitConfig) -> Self {
        Self::build(name.into(), config, None)
    }

    /// A breaker that is one endpoint of `group` (see [`EjectionGroup`]).
    pub fn in_group(
        name: impl Into<Arc<str>>,
        config: CircuitConfig,
        group: &EjectionGroup,
    ) -> Self {
        group.inner.members.fetch_add(1, Ordering::AcqRel);
        Self::build(name.into(), config, Some(group.clone()))
    }

    fn build(name: Arc<str>, config: CircuitConfig, group: Option<EjectionGroup>) -> Self {
        let (changes, _) = watch::channel(CircuitState::Closed);
        Self {
            shared: Arc::new(Shared {
                name,
                state: AtomicU8::new(CircuitState::Closed.as_u8()),
                machine: Mutex::new(Machine {
                    state: CircuitState::Closed,
                    window: Rolling::new(config.window),
                    consecutive_failures: 0,
                    open_until: Instant::now(),
                    reopens: 0,
                    probes_in_flight: 0,
                    probe_successes: 0,
                    holds_ejection: false,
                }),
                config,
                changes,
                wake: Arc::new(Notify::new()),
                callbacks: Mutex::new(Vec::new()),
                group,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state. An open circuit whose open duration has passed
    /// reports `Open` until the next call attempt moves it to half-open.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// A receiver of every state change.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.shared.changes.subscribe()
    }

    /// Calls `callback(name, transition)` on every state change (for metrics
    /// and logs). Runs under the breaker's lock: keep it short.
    pub fn on_transition(&self, callback: impl Fn(&str, Transition) + Send + Sync + 'static) {
        if let Ok(mut callbacks) = self.shared.callbacks.lock() {
            callbacks.push(Arc::new(callback));
        }
    }

    /// Reports this breaker's state and every change to `metrics`
    /// (`circuit_state`, `circuit_transitions_total`).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(&self, metrics: &super::CircuitMetrics) {
        metrics.attach(self);
    }

    /// Asks to make a call. The returned permit records the outcome; a
    /// permit dropped without recording (a cancelled call) counts as nothing
    /// and gives a half-open probe slot back.
    pub fn try_acquire(&self) -> Result<Permit, Refused> {
        if self.state() == CircuitState::Closed {
            return Ok(self.permit(false));
        }
        let mut machine = self.lock();
        let now = Instant::now();
        if machine.state == CircuitState::Open {
            if now < machine.open_until {
                return Err(Refused {
                    retry_after: machine.open_until - now,
                });
            }
            self.transition(&mut machine, CircuitState::HalfOpen);
        }
        match machine.state {
            CircuitState::Closed => Ok(self.permit(false)),
            CircuitState::HalfOpen
                if machine.probes_in_flight < self.shared.config.half_open_probes =>
            {
                machine.probes_in_flight += 1;
                Ok(self.permit(true))
            }
            _ => Err(Refused {
                // The probes in flight decide soon; a second is the least
                // `Retry-After` can say.
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Whether a call would be admitted now, without taking a permit.
    /// `Err` carries how long until that may change.
    pub(crate) fn admits(&self) -> Result<(), Option<Instant>> {
        if self.state() == CircuitState::Closed {
            return Ok(());
        }
        let machine = self.lock();
        match machine.state {
            CircuitState::Closed => Ok(()),
            CircuitState::Open if Instant::now() < machine.open_until => {
                Err(Some(machine.open_until))
            }
            CircuitState::Open => Ok(()),
            CircuitState::HalfOpen
                if machine.probes_in_flight < self.shared.config.half_open_probes =>
            {
                Ok(())
            }
            CircuitState::HalfOpen => Err(None),
        }
    }

    /// Resolves when a probe slot frees or the state changes.
    pub(crate) fn changed(&self) -> tokio::sync::futures::OwnedNotified {
        self.shared.wake.clone().notified_owned()
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // A panic while holding the lock cannot leave the machine in a state
        // worse than a stale count, so poisoning is ignored.
        self.shared
            .machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        let mut machine = self.lock();
        let config = &self.shared.config;
        if probe {
            machine.probes_in_flight = machine.probes_in_flight.saturating_sub(1);
            if machine.state != CircuitState::HalfOpen {
                return;
            }
            match outcome {
                Outcome::Failure => self.open(&mut machine, true),
                Outcome::Success => {
                    machine.probe_successes += 1;
                    if machine.probe_successes >= config.half_open_probes {
                        self.transition(&mut machine, CircuitState::Closed);
                    }
                }
                Outcome::Ignored => {}
            }
            self.shared.wake.notify_waiters();
            return;
        }
        if machine.state != CircuitState::Closed {
            // Admitted before the circuit opened: says nothing new.
            return;
        }
        let now = Instant::now();
        match outcome {
            Outcome::Ignored => return,
            Outcome::Success => {
                machine.consecutive_failures = 0;
                machine.window.push(now, false);
            }
            Outcome::Failure => {
                machine.consecutive_failures += 1;
                machine.window.push(now, true);
            }
        }
        let (calls, failures) = machine.window.totals(now);
        let by_rate = calls >= config.minimum_calls
            && f64::from(failures) >= config.failure_rate * f64::from(calls);
        let by_streak = config
            .consecutive_failures
            .is_some_and(|n| machine.consecutive_failures >= n);
        if (by_rate || by_streak) && failures > 0 {
            self.open(&mut machine, false);
        }
    }

    fn release_probe(&self) {
        let mut machine = self.lock();
        machine.probes_in_flight = machine.probes_in_flight.saturating_sub(1);
        drop(machine);
        self.shared.wake.notify_waiters();
    }

    /// Opens the circuit, unless its group forbids ejecting this endpoint.
    fn open(&self, machine: &mut Machine, reopening: bool) {
        if !machine.holds_ejection
            && let Some(group) = &self.shared.group
        {
            if !group.try_eject() {
                tracing::debug!(target: "tower_gateway::circuit", name = %self.shared.name, "ejection refused by group limits");
                // Stay (or go back to) closed, with a clean slate.
                machine.window.clear();
                machine.consecutive_failures = 0;
                if machine.state != CircuitState::Closed {
                    self.transition(machine, CircuitState::Closed);
                }
                return;
            }
            machine.holds_ejection = true;
        }
        let exponent = if reopening {
            machine.reopens.min(16)
        } else {
            0
        };
        let open_for = self
            .shared
            .config
            .base_open
            .saturating_mul(1u32 << exponent)
            .min(self.shared.config.max_open);
        machine.reopens = if reopening { machine.reopens + 1 } else { 1 };
        machine.open_until = Instant::now() + open_for;
        self.transition(machine, CircuitState::Open);
    }

    fn transition(&self, machine: &mut Machine, to: CircuitState) {
        let from = machine.state;
        if from == to {
            return;
        }
        machine.state = to;
        match to {
            CircuitState::Closed => {
                machine.window.clear();
                machine.consecutive_failures = 0;
                machine.reopens = 0;
                if std::mem::take(&mut machine.holds_ejection)
                    && let Some(group) = &self.shared.group
                {
                    group.release();
                }
            }
            CircuitState::HalfOpen => {
                machine.probes_in_flight = 0;
                machine.probe_successes = 0;
            }
            CircuitState::Open => {}
        }
        self.shared.state.store(to.as_u8(), Ordering::Release);
        self.shared.changes.send_replace(to);
        self.shared.wake.notify_waiters();
        tracing::info!(target: "tower_gateway::circuit", name = %self.shared.name, from = from.as_str(), to = to.as_str(), "circuit state changed");
        let callbacks = self
            .shared
            .callbacks
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        for callback in callbacks {
            callback(&self.shared.name, Transition { from, to });
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            let held = self
                .machine
                .get_mut()
                .map(|m| m.holds_ejection)
                .unwrap_or(false);
            if held {
                group.release();
            }
            group.inner.members.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Permission to make one call; record its outcome with [`Permit::record`].
#[must_use = "a permit records the outcome of one call"]
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl Permit {
    /// Records the outcome of the call.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A probe whose call was cancelled gives its slot back, or the
        // breaker would stay half-open with no probe able to close it.
        if !self.recorded && self.probe {
            self.breaker.release_probe();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish()
    }
}

/// The endpoints of one service whose breakers eject them, as Envoy's
/// outlier detection does: at most `max_ejected_fraction` of the members
/// may be ejected at once (at least one, when there are two or more), and
/// the last member that is not ejected never is.
#[derive(Clone, Debug)]
pub struct EjectionGroup {
    inner: Arc<GroupInner>,
}

#[derive(Debug)]
struct GroupInner {
    members: AtomicUsize,
    ejected: AtomicUsize,
    max_fraction: f64,
}

impl EjectionGroup {
    /// A group allowing at most `max_ejected_fraction` (0.0–1.0) of its
    /// members to be ejected.
    pub fn new(max_ejected_fraction: f64) -> Self {
        Self {
            inner: Arc::new(GroupInner {
                members: AtomicUsize::new(0),
                ejected: AtomicUsize::new(0),
                max_fraction: max_ejected_fraction.clamp(0.0, 1.0),
            }),
        }
    }

    /// Members currently ejected.
    pub fn ejected(&self) -> usize {
        self.inner.ejected.load(Ordering::Acquire)
    }

    /// Members of the group.
    pub fn members(&self) -> usize {
        self.inner.members.load(Ordering::Acquire)
    }

    fn try_eject(&self) -> bool {
        let members = self.members();
        // Truncation is intended: a fraction of a member cannot be ejected.
        let allowed = ((members as f64 * self.inner.max_fraction) as usize).max(1);
        self.inner
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                (ejected < allowed && ejected + 1 < members).then_some(ejected + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        let _ = self
            .inner
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
    }
}

/// Calls and failures of the rolling window.
enum Rolling {
    Count {
        ring: std::collections::VecDeque<bool>,
        size: usize,
        failures: u32,
    },
    Time {
        buckets: Vec<Bucket>,
        slice: Duration,
        origin: Instant,
    },
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
}

impl Rolling {
    fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Self::Count {
                ring: std::collections::VecDeque::with_capacity(n as usize),
                size: n as usize,
                failures: 0,
            },
            Window::Time { length, buckets } => Self::Time {
                buckets: vec![Bucket::default(); buckets as usize],
                slice: (length / buckets).max(Duration::from_micros(1)),
                origin: Instant::now(),
            },
        }
    }

    fn epoch(origin: Instant, slice: Duration, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(origin).as_nanos();
        // +1 so that epoch 0 marks a bucket never written.
        u64::try_from(nanos / slice.as_nanos().max(1)).unwrap_or(u64::MAX - 1) + 1
    }

    fn push(&mut self, now: Instant, failed: bool) {
        match self {
            Self::Count {
                ring,
                size,
                failures,
            } => {
                if ring.len() == *size && ring.pop_front() == Some(true) {
                    *failures -= 1;
                }
                ring.push_back(failed);
                *failures += u32::from(failed);
            }
            Self::Time {
                buckets,
                slice,
                origin,
            } => {
                let epoch = Self::epoch(*origin, *slice, now);
                let len = buckets.len() as u64;
                let bucket = &mut buckets[(epoch % len) as usize];
                if bucket.epoch != epoch {
                    *bucket = Bucket {
                        epoch,
                        calls: 0,
                        failures: 0,
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(failed);
            }
        }
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        match self {
            Self::Count { ring, failures, .. } => (ring.len() as u32, *failures),
            Self::Time {
                buckets,
                slice,
                origin,
            } => {
                let epoch = Self::epoch(*origin, *slice, now);
                let len = buckets.len() as u64;
                buckets
                    .iter()
                    .filter(|b| b.epoch != 0 && b.epoch + len > epoch)
                    .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Self::Count { ring, failures, .. } => {
                ring.clear();
                *failures = 0;
            }
            Self::Time { buckets, .. } => buckets.fill(Bucket::default()),
        }
    }
}
