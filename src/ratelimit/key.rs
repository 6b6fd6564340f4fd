//! Rate-limit keys: who a request is counted against.
//!
//! A key is built only from data the gateway can trust: the [`Identity`]
//! an authenticating layer verified, the peer address of the connection
//! (and forwarding headers only when that peer is a proxy you trust), and
//! request headers you name explicitly. The bearer token itself is never
//! read: a request whose token was not verified has no [`Identity`], and
//! [`Consumer`] finds no key in it.
//!
//! Key material from the client is escaped, so a value cannot reach into
//! another component, another key, or the Redis hash tag, and an over-long
//! value is replaced by its SHA-256 rather than truncated or dropped (see
//! [`KeyBuilder`]).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use serde_json::Value;

pub use crate::connection::ClientAddr;
use crate::{
    identity::{ClaimPath, Identity},
    route::RouteTemplate,
};

/// The longest value (in bytes, before escaping) one key component keeps
/// verbatim; a longer value is replaced by its SHA-256 (see
/// [`KeyBuilder::push`]), never truncated and never swapped for another
/// key, so two long values never share a bucket.
pub const MAX_VALUE_LEN: usize = 256;

/// The longest a whole key may grow (escaped).
pub const MAX_KEY_LEN: usize = 1024;

/// What a [`KeyExtractor`] may read of a request: its head and extensions.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// Borrows the parts of a request.
    pub fn new(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> Self {
        Self {
            method,
            uri,
            headers,
            extensions,
        }
    }

    /// Borrows a request.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self::new(
            request.method(),
            request.uri(),
            request.headers(),
            request.extensions(),
        )
    }

    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The headers (client-controlled: use only headers you trust).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The extensions.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The verified caller, if an authenticating layer put one there.
    pub fn identity(&self) -> Option<&'a Identity> {
        self.extensions.get::<Identity>()
    }

    /// The matched route template, if the router put one there.
    pub fn route(&self) -> Option<&'a RouteTemplate> {
        self.extensions.get::<RouteTemplate>()
    }

    /// The connection's peer address, if the server put one there.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.extensions.get::<ClientAddr>().map(|p| p.0)
    }
}

/// Why no key could be built for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request lacks what the extractor keys on (named here).
    #[error("no {0} to key on")]
    Missing(&'static str),
    /// A component's name is longer than [`MAX_VALUE_LEN`], or the key
    /// would grow beyond [`MAX_KEY_LEN`] even with long values hashed.
    #[error("rate-limit key too long")]
    TooLong,
}

/// The key under construction: a sequence of `name=value;` components in
/// which every byte outside `A-Z a-z 0-9 - . _ ~ / @ + ! *` is
/// percent-encoded.
///
/// Escaping makes the encoding injective: `;`, `=` and `%` never appear
/// raw inside a value, so distinct sequences of components always give
/// distinct keys, and `{`/`}` never appear at all, so the Redis Cluster hash
/// tag around the key cannot be cut short by a client.
#[derive(Debug, Clone, Default)]
pub struct KeyBuilder {
    buf: String,
}

impl KeyBuilder {
    /// An empty key.
    pub fn new() -> Self {
        Self {
            buf: String::with_capacity(64),
        }
    }

    /// Appends the component `name=value;`.
    ///
    /// `name` says what the value is (`sub`, `ip`, `h:x-api-key`); it is
    /// escaped like the value. A value longer than [`MAX_VALUE_LEN`] bytes,
    /// or one whose escaped form would take the key beyond [`MAX_KEY_LEN`],
    /// is written as `#` and the lower-case hex SHA-256 of its bytes: `#` is
    /// always escaped in a verbatim value, so a hashed value can never spell
    /// a verbatim one, and distinct values keep distinct keys (up to SHA-256
    /// collisions). Names longer than [`MAX_VALUE_LEN`] are refused with
    /// [`KeyError::TooLong`].
    ///
    /// ```
    /// use tower_gateway::ratelimit::key::KeyBuilder;
    ///
    /// let mut a = KeyBuilder::new();
    /// a.push("sub", "x".repeat(300).as_bytes()).unwrap();
    /// assert!(a.as_str().starts_with("sub=#"));
    /// let mut b = KeyBuilder::new();
    /// b.push("sub", "y".repeat(300).as_bytes()).unwrap();
    /// assert_ne!(a.as_str(), b.as_str());
    /// ```
    pub fn push(&mut self, name: &str, value: &[u8]) -> Result<(), KeyError> {
        if name.len() > MAX_VALUE_LEN {
            return Err(KeyError::TooLong);
        }
        let start = self.buf.len();
        escape_into(&mut self.buf, name.as_bytes());
        self.buf.push('=');
        let value_at = self.buf.len();
        if value.len() <= MAX_VALUE_LEN {
            escape_into(&mut self.buf, value);
        }
        if value.len() > MAX_VALUE_LEN || self.buf.len() + 1 > MAX_KEY_LEN {
            self.buf.truncate(value_at);
            push_digest(&mut self.buf, value);
        }
        self.buf.push(';');
        if self.buf.len() > MAX_KEY_LEN {
            self.buf.truncate(start);
            return Err(KeyError::TooLong);
        }
        Ok(())
    }

    /// A key starting with components already escaped by a builder.
    pub(crate) fn from_prefix(prefix: &str) -> Self {
        let mut buf = String::with_capacity(prefix.len() + 64);
        buf.push_str(prefix);
        Self { buf }
    }

    /// The key so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    pub(crate) fn into_string(self) -> String {
        self.buf
    }
}

/// `#` and the hex SHA-256 of `bytes`: what stands for a value too long to
/// keep verbatim.
fn push_digest(out: &mut String, bytes: &[u8]) {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('#');
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/@+!*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// Decides which key a request is counted against.
///
/// Implement it for your own keys; push components with
/// [`KeyBuilder::push`], which keeps client data from breaking the key's
/// structure. Closures with the same signature implement it too:
///
/// ```
/// use tower_gateway::ratelimit::{KeyBuilder, KeyError, KeyExtractor, RequestInfo};
///
/// /// Keys on the tenant claim, for `POST`s only.
/// fn tenant_writes(req: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
///     let tenant = req
///         .identity()
///         .and_then(|id| id.claims().get("tenant"))
///         .and_then(|v| v.as_str())
///         .ok_or(KeyError::Missing("tenant"))?;
///     key.push("tenant", tenant.as_bytes())?;
///     key.push("method", req.method().as_str().as_bytes())
/// }
///
/// fn check(_: impl KeyExtractor) {}
/// check(tenant_writes);
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// Appends this extractor's components to `key`, or says why the
    /// request has none.
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError>;

    /// Uses `fallback` when this extractor finds no key (Kong's "consumer,
    /// else IP").
    fn or<B>(self, fallback: B) -> Or<Self, B>
    where
        Self: Sized,
        B: KeyExtractor,
    {
        Or {
            first: self,
            fallback,
        }
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&RequestInfo<'_>, &mut KeyBuilder) -> Result<(), KeyError> + Send + Sync + 'static,
{
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        self(request, key)
    }
}

/// One extractor, else another; see [`KeyExtractor::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B> {
    first: A,
    fallback: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        let mark = key.len();
        // The components are tagged by kind, so a key made by the fallback
        // never equals one made by the first extractor.
        key.push("or", b"1")?;
        if self.first.extract(request, key).is_ok() {
            return Ok(());
        }
        key.truncate(mark);
        key.push("or", b"2")?;
        self.fallback.extract(request, key)
    }
}

macro_rules! composite {
    ($($name:ident),+) => {
        /// A composite key: every part, in order (per route *and* per
        /// consumer, say). Missing if any part is missing.
        impl<$($name: KeyExtractor),+> KeyExtractor for ($($name,)+) {
            fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
                #[allow(non_snake_case)]
                let ($($name,)+) = self;
                $($name.extract(request, key)?;)+
                Ok(())
            }
        }
    };
}
composite!(A, B);
composite!(A, B, C);
composite!(A, B, C, D);

/// Per consumer: the verified caller's subject, or any verified claim.
///
/// Reads only the [`Identity`] in the request extensions, which exists only
/// when an authenticating layer verified the caller. A request without one
/// has no key ([`KeyError::Missing`]).
#[derive(Debug, Clone)]
pub struct Consumer {
    claim: Option<ClaimPath>,
}

impl Consumer {
    /// Keys on the issuer and subject (`iss`, `sub`): subjects are unique
    /// per issuer only.
    pub fn subject() -> Self {
        Self { claim: None }
    }

    /// Keys on the claim at a dotted path (`tenant`, `org.id`). Strings,
    /// numbers and booleans are used as text; other values count as
    /// missing.
    pub fn claim(path: &str) -> Self {
        Self::claim_path(ClaimPath::dotted(path))
    }

    /// Keys on the claim at `path`.
    pub fn claim_path(path: ClaimPath) -> Self {
        Self { claim: Some(path) }
    }
}

impl KeyExtractor for Consumer {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        let identity = request.identity().ok_or(KeyError::Missing("identity"))?;
        match &self.claim {
            None => {
                let subject = identity.subject().ok_or(KeyError::Missing("subject"))?;
                key.push("iss", identity.issuer().unwrap_or("").as_bytes())?;
                key.push("sub", subject.as_bytes())
            }
            Some(path) => {
                let value = identity.claim(path).ok_or(KeyError::Missing("claim"))?;
                let name = path.to_string();
                let text;
                let bytes = match value {
                    Value::String(s) => s.as_bytes(),
                    Value::Number(_) | Value::Bool(_) => {
                        text = value.to_string();
                        text.as_bytes()
                    }
                    _ => return Err(KeyError::Missing("claim")),
                };
                key.push(&format!("c:{name}"), bytes)
            }
        }
    }
}

/// Per header value (an API key, a tenant header). Only the first value of
/// the header is used, so a client cannot mint new keys by adding a
/// second one.
///
/// Use it only for headers whose value you trust or whose abuse costs the
/// client alone: anyone can send any value.
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys on the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for Header {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        let value = request
            .headers()
            .get(&self.name)
            .ok_or(KeyError::Missing("header"))?;
        key.push(&format!("h:{}", self.name), value.as_bytes())
    }
}

/// Per route: the [`RouteTemplate`] the router matched (never the raw path,
/// which would let clients mint keys).
#[derive(Debug, Clone, Copy, Default)]
pub struct Route;

impl KeyExtractor for Route {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        let route = request.route().ok_or(KeyError::Missing("route"))?;
        key.push("route", route.as_str().as_bytes())
    }
}

/// One key for every request: a global limit (alone), or a fixed part of a
/// composite.
#[derive(Debug, Clone)]
pub struct Fixed(pub &'static str);

impl KeyExtractor for Fixed {
    fn extract(&self, _request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        key.push("fixed", self.0.as_bytes())
    }
}

/// Which forwarding header a trusted proxy sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// Per client IP address.
///
/// By default the key is the connection's peer address ([`ClientAddr`]) and
/// forwarding headers are ignored: anyone can write them. Behind proxies,
/// name the networks they send from with [`ClientIp::trust`]; then, when
/// the peer is one of them, the forwarding header is read from the right
/// (the hop the nearest proxy added) leftwards, skipping trusted proxies,
/// and the first untrusted address is the client. Whatever a client writes
/// itself lies to the left of that and is never used. A malformed hop ends
/// the walk at the last trusted one.
///
/// ```
/// use tower_gateway::ratelimit::{ClientIp, ForwardedHeader};
///
/// let ip = ClientIp::peer()
///     .trust("10.0.0.0/8".parse().unwrap())
///     .header(ForwardedHeader::XForwardedFor)
///     .ipv6_prefix(64);
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

/// At most this many forwarding hops are examined.
const MAX_HOPS: usize = 32;

impl ClientIp {
    /// Keys on the peer address only.
    pub fn peer() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 128,
        }
    }

    /// Trusts proxies in `net` to report the client in the forwarding
    /// header.
    pub fn trust(mut self, net: IpNet) -> Self {
        self.trusted.push(net);
        self
    }

    /// Which forwarding header trusted proxies set (default
    /// `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (64: one key per
    /// subnet, since a host can take any address of its /64). Default 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client's address for this request.
    pub fn client(&self, request: &RequestInfo<'_>) -> Option<IpAddr> {
        let mut client = canonical(request.peer()?.ip());
        if !self.is_trusted(client) {
            return Some(client);
        }
        let (name, parse): (_, fn(&str) -> Option<IpAddr>) = match self.header {
            ForwardedHeader::XForwardedFor => ("x-forwarded-for", parse_xff_hop),
            ForwardedHeader::Forwarded => ("forwarded", parse_forwarded_hop),
        };
        // Every line of the header, in order, forms one list (RFC 9110 §5.3).
        let mut hops: Vec<&str> = Vec::new();
        for value in request.headers().get_all(name) {
            let Ok(text) = value.to_str() else {
                // Not text: the list cannot be read past here.
                hops.push("");
                continue;
            };
            hops.extend(text.split(','));
        }
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(ip) = parse(hop.trim()) else { break };
            client = canonical(ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &RequestInfo<'_>, key: &mut KeyBuilder) -> Result<(), KeyError> {
        let ip = self
            .client(request)
            .ok_or(KeyError::Missing("peer address"))?;
        let ip = match ip {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(self.ipv6_prefix)))
            }
            other => other,
        };
        key.push("ip", ip.to_string().as_bytes())
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 client they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_xff_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §6).
fn parse_forwarded_hop(element: &str) -> Option<IpAddr> {
    let node = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(rest) = node.strip_prefix('[') {
        // "[2001:db8::1]" or "[2001:db8::1]:4711"
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // "192.0.2.43" or "192.0.2.43:47011"; "unknown" and "_hidden" do not parse.
    let addr = node.split_once(':').map_or(node, |(a, _)| a);
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn mask128(bits: u8) -> u128 {
    match bits {
        0 => 0,
        b if b >= 128 => u128::MAX,
        b => u128::MAX << (128 - u32::from(b)),
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with a `prefix`-bit mask (`None` if the prefix
    /// is longer than the address).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self {
            addr: canonical(addr),
            prefix: if canonical(addr).is_ipv4() && addr.is_ipv6() {
                prefix.saturating_sub(96)
            } else {
                prefix
            },
        })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = (mask128(self.prefix.saturating_add(96)) & u128::from(u32::MAX)) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| IpNetError(s.to_owned()))?,
            None => max,
        };
        Self::new(addr, prefix).ok_or_else(|| IpNetError(s.to_owned()))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network")]
pub struct IpNetError(String);

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn info_with(peer: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap, Extensions) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut ext = Extensions::new();
        ext.insert(ClientAddr(peer.parse().unwrap()));
        (Method::GET, Uri::from_static("/"), map, ext)
    }

    fn client(ip: &ClientIp, peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        let (m, u, h, e) = info_with(peer, headers);
        ip.client(&RequestInfo::new(&m, &u, &h, &e)).unwrap()
    }

    #[test]
    fn escaping_is_injective_and_brace_free() {
        let mut a = KeyBuilder::new();
        a.push("h:x", b"1;h:y=2").unwrap();
        let mut b = KeyBuilder::new();
        b.push("h:x", b"1").unwrap();
        b.push("y", b"2").unwrap();
        assert_ne!(a.as_str(), b.as_str());
        let mut c = KeyBuilder::new();
        c.push("v", "}{é%\n".as_bytes()).unwrap();
        assert_eq!(c.as_str(), "v=%7D%7B%C3%A9%25%0A;");
    }

    #[test]
    fn long_values_are_hashed_not_truncated() {
        let key = |value: &[u8]| {
            let mut k = KeyBuilder::new();
            k.push("v", value).unwrap();
            k.into_string()
        };
        let a = key(&[b'a'; MAX_VALUE_LEN + 1]);
        assert_eq!(a.len(), "v=#;".len() + 64, "{a}");
        assert!(a.starts_with("v=#"), "{a}");
        assert_eq!(a, key(&[b'a'; MAX_VALUE_LEN + 1]));
        // Same prefix, different tail: a truncating key would collide.
        let mut b = vec![b'a'; MAX_VALUE_LEN + 1];
        b[MAX_VALUE_LEN] = b'b';
        assert_ne!(a, key(&b));
        // A value at the limit stays verbatim.
        assert_eq!(
            key(&[b'a'; MAX_VALUE_LEN]),
            format!("v={};", "a".repeat(256))
        );
        // `#` in a verbatim value is escaped: no value spells a digest.
        assert!(key(&a.as_bytes()[2..a.len() - 1]).starts_with("v=%23"));
        // Values whose escaped form would overflow the key are hashed too.
        let mut k = KeyBuilder::new();
        for _ in 0..3 {
            k.push("v", &[b'%'; MAX_VALUE_LEN]).unwrap();
        }
        assert!(k.as_str().len() <= MAX_KEY_LEN);
        assert!(
            k.as_str().ends_with(';') && k.as_str().contains("v=#"),
            "{}",
            k.as_str()
        );
        assert_eq!(
            KeyBuilder::new().push(&"n".repeat(MAX_VALUE_LEN + 1), b"v"),
            Err(KeyError::TooLong)
        );
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let ip = ClientIp::peer().trust("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            client(&ip, "192.0.2.1:1", &[("x-forwarded-for", "1.1.1.1")]),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn xff_walks_right_to_left_past_trusted_proxies() {
        let ip = ClientIp::peer().trust("10.0.0.0/8".parse().unwrap());
        // The client forged "6.6.6.6"; proxy 10.0.0.2 saw 203.0.113.9.
        let got = client(
            &ip,
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")],
        );
        assert_eq!(got, "203.0.113.9".parse::<IpAddr>().unwrap());
        // Several header lines form one list.
        let got = client(
            &ip,
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
        );
        assert_eq!(got, "203.0.113.9".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last trusted hop.
        let got = client(
            &ip,
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, garbage, 10.0.0.2")],
        );
        assert_eq!(got, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_header_nodes() {
        let ip = ClientIp::peer()
            .trust("10.0.0.0/8".parse().unwrap())
            .header(ForwardedHeader::Forwarded);
        let got = client(
            &ip,
            "10.0.0.1:1",
            &[(
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.3"#,
            )],
        );
        assert_eq!(got, "2001:db8:cafe::17".parse::<IpAddr>().unwrap());
        let got = client(
            &ip,
            "10.0.0.1:1",
            &[("forwarded", "for=unknown, For=\"192.0.2.60:80\"")],
        );
        assert_eq!(got, "192.0.2.60".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn networks() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(net.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!net.contains("2001:db9::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
        let host: IpNet = "192.0.2.1".parse().unwrap();
        assert!(host.contains("192.0.2.1".parse().unwrap()));
        assert!(!host.contains("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn ipv6_prefix_groups_a_subnet() {
        let ip = ClientIp::peer().ipv6_prefix(64);
        let key = |peer: &str| {
            let (m, u, h, e) = info_with(peer, &[]);
            let mut k = KeyBuilder::new();
            ip.extract(&RequestInfo::new(&m, &u, &h, &e), &mut k)
                .unwrap();
            k.into_string()
        };
        assert_eq!(key("[2001:db8::1]:1"), key("[2001:db8::ffff:1]:1"));
        assert_ne!(key("[2001:db8::1]:1"), key("[2001:db8:0:1::1]:1"));
    }
}
