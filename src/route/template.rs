use std::sync::Arc;

/// The template of the route a request matched (`/orders/{id}`, never the
/// raw path), put into request extensions by the router that matched it.
///
/// Metrics label requests with it, so the number of series stays bounded by
/// the routes you configured, whatever paths clients send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteTemplate(pub Arc<str>);

impl RouteTemplate {
    /// A template from a string.
    pub fn new(template: impl Into<Arc<str>>) -> Self {
        Self(template.into())
    }

    /// The template as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
