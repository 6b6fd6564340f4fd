//! The outcome of one rate-limit check, whichever backend made it.

use std::time::Duration;

use super::limit::MAX_WINDOWS;

/// The outcome of checking one request against a [`Limit`](super::Limit).
///
/// `windows` has one entry per window of the limit, in the limit's order,
/// describing the quota *after* this decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) retry_after: Duration,
    pub(crate) windows: States,
}

/// The quota left in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Requests that would be admitted right now (0 when this window
    /// refused the request).
    pub remaining: u64,
    /// Time until the window is full again (all its burst available).
    pub reset: Duration,
}

impl Decision {
    /// Whether the request was admitted (and counted in every window).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// For a refused request: the time until a retry can be admitted, as
    /// far as this key's own use goes. Zero when allowed.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The quota of each window after this decision.
    pub fn windows(&self) -> &[WindowState] {
        self.windows.as_slice()
    }

    /// The `Retry-After` value (RFC 9110 §10.2.3): whole seconds, rounded
    /// up so a client that waits that long is admitted, and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }
}

/// The states of a decision's windows, inline: a decision allocates
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct States {
    items: [WindowState; MAX_WINDOWS],
    len: usize,
}

impl States {
    /// Appends a state; past [`MAX_WINDOWS`] (which valid limits never
    /// reach) states are dropped.
    pub(crate) fn push(&mut self, state: WindowState) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = state;
            self.len += 1;
        }
    }

    pub(crate) fn as_slice(&self) -> &[WindowState] {
        &self.items[..self.len]
    }
}

impl FromIterator<WindowState> for States {
    fn from_iter<I: IntoIterator<Item = WindowState>>(iter: I) -> Self {
        let mut states = Self::default();
        iter.into_iter().for_each(|s| states.push(s));
        states
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_positive() {
        let d = |retry| Decision {
            allowed: false,
            retry_after: retry,
            windows: States::default(),
        };
        assert_eq!(d(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(d(Duration::from_millis(1000)).retry_after_secs(), 1);
        assert_eq!(d(Duration::from_millis(1001)).retry_after_secs(), 2);
        assert_eq!(d(Duration::ZERO).retry_after_secs(), 1);
    }
}
