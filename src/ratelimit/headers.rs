//! The quota headers: IETF `RateLimit-Policy`/`RateLimit`, and Kong's
//! `X-RateLimit-Limit-<Window>`/`X-RateLimit-Remaining-<Window>`.

use http::{HeaderName, HeaderValue, header};

use super::{
    decision::{Decision, ceil_secs},
    limit::Limit,
};

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Which quota headers responses carry.
///
/// - **IETF** (on by default): the fields of the HTTPAPI working group's
///   draft-ietf-httpapi-ratelimit-headers (`-08` onwards), one list member
///   per window, named after it:
///
///   ```text
///   RateLimit-Policy: "second";q=5;w=1, "hour";q=1000;w=3600
///   RateLimit: "second";r=4;t=1, "hour";r=999;t=4
///   ```
///
///   `q` is the window's limit and `w` its period in seconds; `r` is what is
///   left and `t` the seconds until the window is full again (GCRA refills
///   continuously, so this is when the last used request is back).
/// - **Kong** (off by default): `X-RateLimit-Limit-Second: 5` and
///   `X-RateLimit-Remaining-Second: 4`, per window.
/// - **Hidden** (Kong's `hide_client_headers`): neither, on any response.
///
/// A refused request always carries `Retry-After` (RFC 9110 §10.2.3, whole
/// seconds, rounded up, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaHeaders {
    ietf: bool,
    kong: bool,
    hidden: bool,
}

impl Default for QuotaHeaders {
    fn default() -> Self {
        Self {
            ietf: true,
            kong: false,
            hidden: false,
        }
    }
}

impl QuotaHeaders {
    /// Sends the IETF fields (default on).
    pub fn ietf(mut self, on: bool) -> Self {
        self.ietf = on;
        self
    }

    /// Sends Kong's `X-RateLimit-*-<Window>` headers (default off).
    pub fn kong(mut self, on: bool) -> Self {
        self.kong = on;
        self
    }

    /// Sends no quota headers at all (Kong's `hide_client_headers`);
    /// `Retry-After` stays on refusals.
    pub fn hidden(mut self, on: bool) -> Self {
        self.hidden = on;
        self
    }
}

/// The headers of one limit, with everything that does not change per
/// request rendered once.
#[derive(Debug, Clone)]
pub(crate) struct PreparedHeaders {
    policy: Option<HeaderValue>,
    /// `"name"` of each window, for the `RateLimit` field.
    quoted: Vec<String>,
    kong: Vec<KongWindow>,
}

#[derive(Debug, Clone)]
struct KongWindow {
    limit_name: HeaderName,
    limit_value: HeaderValue,
    remaining_name: HeaderName,
}

/// Headers collected for a response.
pub(crate) type HeaderList = Vec<(HeaderName, HeaderValue)>;

impl PreparedHeaders {
    /// Prepares the headers of `limit` (whose window names are valid
    /// tokens, see [`Limit::validate`]).
    pub(crate) fn new(limit: &Limit, style: QuotaHeaders) -> Self {
        let windows = limit.windows();
        let ietf = style.ietf && !style.hidden;
        let kong = style.kong && !style.hidden;
        let policy = ietf
            .then(|| {
                let text = windows
                    .iter()
                    .map(|w| {
                        format!(
                            "\"{}\";q={};w={}",
                            w.name(),
                            w.limit(),
                            ceil_secs(w.period())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                HeaderValue::try_from(text).ok()
            })
            .flatten();
        let quoted = if ietf {
            windows
                .iter()
                .map(|w| format!("\"{}\"", w.name()))
                .collect()
        } else {
            Vec::new()
        };
        let kong = if kong {
            windows
                .iter()
                .filter_map(|w| {
                    let suffix = capitalized(w.name());
                    Some(KongWindow {
                        limit_name: HeaderName::try_from(format!("x-ratelimit-limit-{suffix}"))
                            .ok()?,
                        limit_value: HeaderValue::from(w.limit()),
                        remaining_name: HeaderName::try_from(format!(
                            "x-ratelimit-remaining-{suffix}"
                        ))
                        .ok()?,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            policy,
            quoted,
            kong,
        }
    }

    /// Appends the quota headers for `decision` to `out`.
    pub(crate) fn render(&self, decision: &Decision, out: &mut HeaderList) {
        if let Some(policy) = &self.policy {
            out.push((RATELIMIT_POLICY, policy.clone()));
            let mut text = Vec::with_capacity(40 * self.quoted.len());
            for (i, (name, state)) in self.quoted.iter().zip(decision.windows()).enumerate() {
                if i > 0 {
                    text.extend_from_slice(b", ");
                }
                text.extend_from_slice(name.as_bytes());
                text.extend_from_slice(b";r=");
                push_decimal(&mut text, state.remaining);
                text.extend_from_slice(b";t=");
                push_decimal(&mut text, ceil_secs(state.reset));
            }
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)) {
                out.push((RATELIMIT, value));
            }
        }
        for (kong, state) in self.kong.iter().zip(decision.windows()) {
            out.push((kong.limit_name.clone(), kong.limit_value.clone()));
            out.push((
                kong.remaining_name.clone(),
                HeaderValue::from(state.remaining),
            ));
        }
    }

    /// `Retry-After` and the quota headers of a refusal.
    pub(crate) fn render_refusal(&self, decision: &Decision, out: &mut HeaderList) {
        out.push((
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_secs()),
        ));
        self.render(decision, out);
    }
}

/// Appends `n` in decimal (what `write!` does, without the formatting
/// machinery on the hot path).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `second` → `Second` (Kong's header suffix; header names are
/// case-insensitive, this only reads well in docs and logs).
fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::decision::WindowState;

    fn decision(allowed: bool) -> Decision {
        Decision {
            allowed,
            retry_after: Duration::from_millis(if allowed { 0 } else { 1200 }),
            windows: [
                WindowState {
                    remaining: 4,
                    reset: Duration::from_millis(200),
                },
                WindowState {
                    remaining: 999,
                    reset: Duration::from_millis(3600),
                },
            ]
            .into_iter()
            .collect(),
        }
    }

    fn render(style: QuotaHeaders, allowed: bool) -> http::HeaderMap {
        let limit = Limit::new().per_second(5).per_hour(1000);
        let prepared = PreparedHeaders::new(&limit, style);
        let mut out = Vec::new();
        if allowed {
            prepared.render(&decision(true), &mut out);
        } else {
            prepared.render_refusal(&decision(false), &mut out);
        }
        out.into_iter().collect()
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn ietf_fields() {
        let h = render(QuotaHeaders::default(), true);
        assert_eq!(
            h["ratelimit-policy"],
            r#""second";q=5;w=1, "hour";q=1000;w=3600"#
        );
        assert_eq!(h["ratelimit"], r#""second";r=4;t=1, "hour";r=999;t=4"#);
        assert!(!h.contains_key("x-ratelimit-limit-second"));
    }

    #[test]
    fn kong_headers() {
        let h = render(QuotaHeaders::default().ietf(false).kong(true), true);
        assert_eq!(h["x-ratelimit-limit-second"], "5");
        assert_eq!(h["x-ratelimit-remaining-second"], "4");
        assert_eq!(h["x-ratelimit-limit-hour"], "1000");
        assert_eq!(h["x-ratelimit-remaining-hour"], "999");
        assert!(!h.contains_key("ratelimit"));
    }

    #[test]
    fn hidden_keeps_only_retry_after() {
        let h = render(QuotaHeaders::default().kong(true).hidden(true), false);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::RETRY_AFTER], "2");
        assert!(render(QuotaHeaders::default().hidden(true), true).is_empty());
    }
}
