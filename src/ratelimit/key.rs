//! Rate-limit keys: who a request is counted against.
//!
//! A key is built only from data the gateway can trust: the [`Identity`]
//! an authenticating layer verified, the client address (the peer of the
//! connection, or the client a proxy you trust names: see
//! [`client_addr`](crate::client_addr)), and
//! request headers you name explicitly. The bearer token itself is never
//! read: a request whose token was not verified has no [`Identity`], and
//! [`Consumer`] finds no key in it.
//!
//! Key material from the client is escaped, so a value cannot reach into
//! another component, another key, or the Redis hash tag, and an over-long
//! value is replaced by its SHA-256 rather than truncated or dropped (see
//! [`KeyBuilder`]).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use serde_json::Value;

pub use crate::client_addr::{ClientAddr, ForwardedHeader, IpNet, IpNetError, ResolvedClient};
use crate::{
    client_addr::{TrustedProxies, mask128},
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

    /// The client a [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer)
    /// resolved, else the peer (see [`ResolvedClient::of`]).
    pub fn client(&self) -> Option<ResolvedClient> {
        ResolvedClient::of(self.extensions)
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

/// The bytes a key keeps as they are; every other byte is percent-encoded.
const KEPT: [bool; 256] = {
    let mut kept = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        kept[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'/' | b'@' | b'+' | b'!' | b'*'
            );
        b += 1;
    }
    kept
};

fn escape_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = bytes;
    while !rest.is_empty() {
        // Runs of kept bytes (all ASCII) are copied at once.
        let run = rest
            .iter()
            .position(|&b| !KEPT[usize::from(b)])
            .unwrap_or(rest.len());
        if let Ok(kept) = std::str::from_utf8(&rest[..run]) {
            out.push_str(kept);
        }
        let Some(&b) = rest.get(run) else { break };
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
        rest = &rest[run + 1..];
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

/// Per client IP address.
///
/// The client is the one a [`ClientAddrLayer`] resolved for the request
/// ([`ResolvedClient`]), so rate limiting agrees with every other layer on
/// who the client is. Without that layer, `ClientIp` resolves it itself:
/// from the connection's peer address ([`ClientAddr`]), reading forwarding
/// headers only from the proxies named with [`ClientIp::trust`] (or
/// [`ClientIp::proxies`]), by the rules of [`TrustedProxies`]. When the
/// layer ran, its answer wins over this trust list.
///
/// [`ClientAddrLayer`]: crate::client_addr::ClientAddrLayer
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
    proxies: TrustedProxies,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// Keys on the peer address only (or on the client a
    /// [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer) resolved).
    pub fn peer() -> Self {
        Self {
            proxies: TrustedProxies::none(),
            ipv6_prefix: 128,
        }
    }

    /// Trusts proxies in `net` to report the client in the forwarding
    /// header.
    pub fn trust(mut self, net: IpNet) -> Self {
        self.proxies = self.proxies.trust(net);
        self
    }

    /// Which forwarding header trusted proxies set (default
    /// `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.proxies = self.proxies.header(header);
        self
    }

    /// Replaces the trusted proxies and the header they set: the same
    /// configuration a [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer)
    /// takes.
    ///
    /// ```
    /// use tower_gateway::client_addr::TrustedProxies;
    /// use tower_gateway::ratelimit::ClientIp;
    ///
    /// let proxies = TrustedProxies::none().trust("10.0.0.0/8".parse().unwrap());
    /// let ip = ClientIp::peer().proxies(proxies);
    /// ```
    pub fn proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (64: one key per
    /// subnet, since a host can take any address of its /64). Default 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// The client's address for this request.
    pub fn client(&self, request: &RequestInfo<'_>) -> Option<IpAddr> {
        if let Some(resolved) = request.extensions().get::<ResolvedClient>() {
            return Some(resolved.ip());
        }
        let peer = request.peer()?;
        Some(self.proxies.resolve(peer.ip(), request.headers()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn escaping_keeps_the_safe_bytes_and_encodes_the_rest() {
        // The byte-at-a-time escaping it replaced.
        fn reference(bytes: &[u8]) -> String {
            let mut out = String::new();
            for &b in bytes {
                if b.is_ascii_alphanumeric() || b"-._~/@+!*".contains(&b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
        let all: Vec<u8> = (0..=255).collect();
        for input in [
            &b""[..],
            b"user-0",
            b"a=b;c",
            b"%%",
            "\u{e9}t\u{e9}".as_bytes(),
            &all,
        ] {
            let mut out = String::new();
            escape_into(&mut out, input);
            assert_eq!(out, reference(input));
        }
    }

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
    #[test]
    fn standalone_trust_list_reads_forwarding_headers() {
        let ip = ClientIp::peer().trust("10.0.0.0/8".parse().unwrap());
        let headers = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
        ];
        assert_eq!(
            client(&ip, "10.0.0.1:1", &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client(&ip, "192.0.2.1:1", &headers),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let ip = ClientIp::peer()
            .trust("10.0.0.0/8".parse().unwrap())
            .header(ForwardedHeader::Forwarded);
        assert_eq!(
            client(&ip, "10.0.0.1:1", &[("forwarded", "for=203.0.113.9")]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_resolved_client_wins_over_the_own_trust_list() {
        let ip = ClientIp::peer().trust("10.0.0.0/8".parse().unwrap());
        let (m, u, h, mut e) = info_with("10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6")]);
        // The edge trusts nobody: the peer is the client.
        e.insert(ResolvedClient::direct("10.0.0.1:1".parse().unwrap()));
        let info = RequestInfo::new(&m, &u, &h, &e);
        assert_eq!(ip.client(&info), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(info.client().map(|c| c.ip()), ip.client(&info));
    }
}
