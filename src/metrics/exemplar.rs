//! Trace IDs as exemplars of the request-duration histogram (feature
//! `otel`).

use std::{fmt::Write, time::SystemTime};

use opentelemetry::trace::TraceId;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::access_log::trace_id;

/// The exemplar label set `{trace_id="…"}`: the 16 bytes of the trace ID,
/// written as 32 hex digits only when the registry is encoded, so observing
/// allocates nothing.
#[derive(Debug, Clone, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    trace_id: TraceIdLabel,
}

#[derive(Debug, Clone, Copy)]
struct TraceIdLabel(TraceId);

impl EncodeLabelValue for TraceIdLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// The exemplar of the request being observed: the current span's trace,
/// if it was sampled (an unsampled trace is never exported, so there would
/// be nothing to link to), with the time it was taken.
pub(crate) fn current() -> (Option<TraceExemplar>, Option<SystemTime>) {
    match trace_id::current() {
        Some(trace) if trace.sampled => (
            Some(TraceExemplar {
                trace_id: TraceIdLabel(trace.trace_id),
            }),
            Some(SystemTime::now()),
        ),
        _ => (None, None),
    }
}
