use std::time::Instant;

use http::{Method, Response};
use tracing::{Level, Span};

use super::{UpstreamCall, layer::TARGET};
use crate::{Identity, reject, route::RouteTemplate};

/// How a request ended, as logged in the `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The response body was sent to its end.
    Complete,
    /// The response body failed while being sent.
    BodyError,
    /// The response (or its body) was dropped before its end: the client
    /// went away, or the server gave up on it.
    Aborted,
    /// The inner service failed without a response.
    ServiceError,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::BodyError => "body_error",
            Self::Aborted => "aborted",
            Self::ServiceError => "service_error",
        }
    }
}

/// What is known about one request, logged once when it ends (or when the
/// last part of it is dropped). Every field is a clone of a shared value
/// (`Arc`s, a standard `Method`) or a number: building it allocates nothing.
pub(crate) struct Entry {
    started: Instant,
    /// The span the request ran in: the event is its child, so a subscriber
    /// shows the span's fields (a request ID, say) with it.
    span: Span,
    method: Method,
    route: Option<RouteTemplate>,
    consumer: Option<Identity>,
    request_bytes: Option<u64>,
    #[cfg(feature = "otel")]
    trace: Option<super::trace_id::SpanTrace>,
    status: Option<u16>,
    refused: Option<&'static str>,
    upstream: Option<UpstreamCall>,
    response_bytes: u64,
    logged: bool,
}

impl Entry {
    pub(crate) fn new(
        method: Method,
        route: Option<RouteTemplate>,
        consumer: Option<Identity>,
        request_bytes: Option<u64>,
    ) -> Self {
        let span = Span::current();
        Self {
            started: Instant::now(),
            #[cfg(feature = "otel")]
            trace: super::trace_id::of(&span),
            span,
            method,
            route,
            consumer,
            request_bytes,
            status: None,
            refused: None,
            upstream: None,
            response_bytes: 0,
            logged: false,
        }
    }

    /// Takes what the response head says.
    pub(crate) fn head<B>(&mut self, response: &Response<B>) {
        self.status = Some(response.status().as_u16());
        self.refused = reject::rejection(response).map(reject::Rejection::code);
        self.upstream = response.extensions().get::<UpstreamCall>().cloned();
    }

    pub(crate) fn add_response_bytes(&mut self, n: usize) {
        self.response_bytes = self.response_bytes.saturating_add(n as u64);
    }

    /// Logs the request, once.
    pub(crate) fn log(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        let duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let route = self.route.as_ref().map(RouteTemplate::as_str);
        let consumer = self.consumer.as_ref().and_then(Identity::subject);
        let upstream = self.upstream.as_ref().map(|u| &*u.endpoint);
        let attempts = self.upstream.as_ref().map(|u| u.attempts);
        #[cfg(feature = "otel")]
        let trace_id = self.trace.map(|t| tracing::field::display(t.trace_id));
        // Without `otel` there is no trace ID; a `None` field is left out.
        #[cfg(not(feature = "otel"))]
        let trace_id: Option<&str> = None;
        tracing::event!(
            target: TARGET,
            parent: &self.span,
            Level::INFO,
            route,
            method = self.method.as_str(),
            status = self.status,
            duration_ms,
            request_bytes = self.request_bytes,
            response_bytes = self.response_bytes,
            consumer,
            upstream,
            attempts,
            refused = self.refused,
            outcome = outcome.as_str(),
            trace_id,
        );
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.log(Outcome::Aborted);
    }
}
