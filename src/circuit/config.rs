use std::time::Duration;

/// The rolling window over which the failure rate is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `length`, kept in `buckets` slices so old calls
    /// age out a slice at a time.
    Time {
        /// How far back the window reaches.
        length: Duration,
        /// How many slices the window is cut into (at least 1).
        buckets: u32,
    },
}

/// When a breaker trips and how it recovers.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::circuit::{CircuitConfig, Window};
///
/// let config = CircuitConfig::default()
///     .window(Window::Count(50))
///     .failure_rate(0.5)
///     .minimum_calls(20)
///     .consecutive_failures(Some(5))
///     .open_duration(Duration::from_secs(5), Duration::from_secs(120))
///     .half_open_probes(3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitConfig {
    pub(crate) window: Window,
    pub(crate) failure_rate: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) base_open: Duration,
    pub(crate) max_open: Duration,
    pub(crate) half_open_probes: u32,
}

impl Default for CircuitConfig {
    /// A 10 s time window in 10 slices; trips at 50 % failures over at least
    /// 10 calls, or at 5 consecutive failures; opens for 5 s, doubling on
    /// every failed recovery up to 2 min; 3 probes in half-open.
    fn default() -> Self {
        Self {
            window: Window::Time {
                length: Duration::from_secs(10),
                buckets: 10,
            },
            failure_rate: 0.5,
            minimum_calls: 10,
            consecutive_failures: Some(5),
            base_open: Duration::from_secs(5),
            max_open: Duration::from_secs(120),
            half_open_probes: 3,
        }
    }
}

impl CircuitConfig {
    /// The rolling window (default 10 s in 10 slices).
    pub fn window(mut self, window: Window) -> Self {
        self.window = match window {
            Window::Count(n) => Window::Count(n.max(1)),
            Window::Time { length, buckets } => Window::Time {
                length: length.max(Duration::from_millis(1)),
                buckets: buckets.max(1),
            },
        };
        self
    }

    /// The failure ratio (0.0–1.0) at or above which the breaker trips
    /// (default 0.5). Values outside the range are clamped.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// Calls the window must hold before the failure rate can trip it
    /// (default 10), so one failure of one call does not open the circuit.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls.max(1);
        self
    }

    /// Trips after this many failures in a row, whatever the rate
    /// (default 5; `None` disables).
    pub fn consecutive_failures(mut self, failures: Option<u32>) -> Self {
        self.consecutive_failures = failures.map(|n| n.max(1));
        self
    }

    /// How long the circuit stays open: `base` at first, doubling each time
    /// a half-open probe fails, never more than `max` (defaults 5 s, 2 min).
    pub fn open_duration(mut self, base: Duration, max: Duration) -> Self {
        self.base_open = base;
        self.max_open = max.max(base);
        self
    }

    /// Probe calls let through in half-open; that many successes close the
    /// circuit, one failure reopens it (default 3).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }
}
