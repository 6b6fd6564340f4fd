use std::{collections::BTreeMap, fmt, sync::Arc};

/// One instance of a service: where to reach it, and what discovery said
/// about it.
///
/// ```
/// use tower_gateway::discovery::Endpoint;
///
/// let e = Endpoint::new("orders-1", "10.0.0.7", 3000).with_tags(["v2"]);
/// assert_eq!(e.authority(), "10.0.0.7:3000");
/// assert_eq!(Endpoint::new("x", "::1", 80).authority(), "[::1]:80");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    id: Arc<str>,
    host: Arc<str>,
    port: u16,
    tags: Arc<[String]>,
    meta: Arc<BTreeMap<String, String>>,
}

impl Endpoint {
    /// An endpoint with a unique `id` (Consul's service ID) at `host:port`.
    pub fn new(id: impl Into<Arc<str>>, host: impl Into<Arc<str>>, port: u16) -> Self {
        Self {
            id: id.into(),
            host: host.into(),
            port,
            tags: Arc::from(Vec::new()),
            meta: Arc::new(BTreeMap::new()),
        }
    }

    /// The same endpoint with these tags.
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect::<Vec<_>>().into();
        self
    }

    /// The same endpoint with this metadata.
    pub fn with_meta(mut self, meta: BTreeMap<String, String>) -> Self {
        self.meta = Arc::new(meta);
        self
    }

    /// The unique ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host name or IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Metadata.
    pub fn meta(&self) -> &BTreeMap<String, String> {
        &self.meta
    }

    /// `host:port`, with IPv6 addresses in brackets (RFC 3986 §3.2.2).
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({} @ {})", self.id, self.authority())
    }
}
