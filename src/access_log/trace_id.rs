//! The OpenTelemetry trace ID of the current span (feature `otel`).

use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace a span belongs to, as tracing-opentelemetry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanTrace {
    /// The W3C trace ID (32 lower-case hex digits when displayed).
    pub(crate) trace_id: TraceId,
    /// Whether the sampler kept the trace: only then is it exported, and
    /// only then is it worth linking to.
    pub(crate) sampled: bool,
}

/// The trace of `span`: `None` when no tracing-opentelemetry layer is
/// installed, the span is disabled, or its context is invalid.
///
/// Reading the context builds the OpenTelemetry span if it was not yet
/// (tracing-opentelemetry builds spans lazily), so call it only after
/// whatever sets the span's remote parent has run — inside the layer that
/// created the span.
pub(crate) fn of(span: &tracing::Span) -> Option<SpanTrace> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let span_context = otel.span_context();
    span_context.is_valid().then(|| SpanTrace {
        trace_id: span_context.trace_id(),
        sampled: span_context.is_sampled(),
    })
}

/// The trace of the current span (see [`of`]).
pub(crate) fn current() -> Option<SpanTrace> {
    of(&tracing::Span::current())
}
