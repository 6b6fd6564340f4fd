//! W3C trace context in and out of HTTP headers, through
//! `tracing-opentelemetry`. No global propagator: the propagators are used
//! directly, here.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::ClientContext;

/// Reads a request's headers for a propagator.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes a propagator's fields into a request's headers, replacing what
/// was there.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing (W3C Trace Context §3.3).
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Gives the server span the client's context as its parent (`Trust`), or
/// a link to it (`Restart`).
pub(super) fn adopt(span: &Span, headers: &HeaderMap, policy: ClientContext, baggage: bool) {
    if span.is_disabled() {
        return;
    }
    let trusted_baggage = baggage && policy == ClientContext::Trust;
    let has_baggage = trusted_baggage && headers.contains_key("baggage");
    if !headers.contains_key("traceparent") && !has_baggage {
        return;
    }
    let extractor = HeaderExtractor(headers);
    let cx = TraceContextPropagator::new().extract(&extractor);
    match policy {
        ClientContext::Trust => {
            let cx = match has_baggage {
                true => BaggagePropagator::new().extract_with_context(&cx, &extractor),
                false => cx,
            };
            // Fails only when no OpenTelemetry layer is installed: then
            // there is no trace to continue.
            let _ = span.set_parent(cx);
        }
        ClientContext::Restart => span.add_link(cx.span().span_context().clone()),
    }
}

/// Writes the W3C context of `span` (`traceparent`, `tracestate`, and the
/// baggage it carries) into `headers`, replacing whatever the client sent,
/// so the upstream continues the trace. Nothing is written when the span
/// is not recorded by an OpenTelemetry layer.
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    // The client's `tracestate` belongs to its `traceparent`: replaced as
    // a pair (the propagator skips an empty one).
    headers.remove("tracestate");
    let mut injector = HeaderInjector(headers);
    TraceContextPropagator::new().inject_context(&cx, &mut injector);
    BaggagePropagator::new().inject_context(&cx, &mut injector);
}
