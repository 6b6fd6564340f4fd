use http::Response;

/// What one call tells the breaker about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream did its job (including a 4xx: the client's fault).
    Success,
    /// The upstream failed (5xx, timeout, connection error).
    Failure,
    /// Says nothing about the upstream; not counted.
    Ignored,
}

/// Decides whether a call counts as a failure. Replace it to count
/// differently (say, 429 as a failure, or only 502–504).
pub trait Classify<T, E>: Send + Sync + 'static {
    /// Classifies the result of one call.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// The default classifier: errors (timeouts, connection failures) and 5xx
/// responses are failures; trailers-only gRPC responses with
/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL` or `UNKNOWN` are failures;
/// everything else, 4xx included, is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B, E> Classify<Response<B>, E> for ServerErrors {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(response) => match response.headers().get("grpc-status").map(|v| v.as_bytes()) {
                // gRPC status codes: 2 UNKNOWN, 4 DEADLINE_EXCEEDED, 13 INTERNAL, 14 UNAVAILABLE.
                Some(b"2" | b"4" | b"13" | b"14") => Outcome::Failure,
                _ => Outcome::Success,
            },
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}
