use std::sync::Arc;

/// Which upstream endpoint answered and after how many attempts: put into
/// the response extensions by the proxy, read by [`AccessLogLayer`].
///
/// A proxy of your own can insert it too; a response without one is logged
/// without `upstream` and `attempts` (a refusal, a local answer).
///
/// [`AccessLogLayer`]: super::AccessLogLayer
///
/// ```
/// use std::sync::Arc;
/// use tower_gateway::access_log::UpstreamCall;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(UpstreamCall {
///     endpoint: Arc::from("10.0.0.7:8080"),
///     attempts: 2,
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCall {
    /// The endpoint that produced the response (its address, or its
    /// discovery ID): shared with the endpoint's other calls, so inserting
    /// it does not allocate.
    pub endpoint: Arc<str>,
    /// Attempts made, the first one included (`1` without retries).
    pub attempts: u32,
}
