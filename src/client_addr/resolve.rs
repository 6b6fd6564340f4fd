//! The one resolver: peer, trusted proxies, forwarding header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{Extensions, HeaderMap, header};

use super::net::{IpNet, canonical};
use crate::connection::ClientAddr;

/// Which forwarding header trusted proxies set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// At most this many forwarding hops are examined, from the right.
const MAX_HOPS: usize = 32;

/// The proxies allowed to tell the gateway who the client is, and the
/// header they say it in.
///
/// With no trusted proxies (the default) the client is the connection's
/// peer and forwarding headers are ignored: anyone can write them. When the
/// peer is in a trusted network, the forwarding header is read from the
/// right (the hop the nearest proxy added) leftwards, skipping trusted
/// proxies, and the first untrusted address is the client. Whatever a
/// client writes itself lies to the left of that and is never used.
///
/// - All lines of the header form one list, in order (RFC 9110 §5.3).
/// - A hop that is not an address (`unknown`, `_hidden`, garbage, a line
///   that is not text) ends the walk at the last trusted hop: the client is
///   then that proxy, never a guess. Empty list elements are skipped
///   (RFC 9110 §5.6.1).
/// - `Forwarded` elements are split outside quoted strings, so a quoted
///   `host="a, for=…"` a proxy passed on cannot name a client.
/// - IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
/// - At most 32 hops are examined.
///
/// Resolution allocates nothing.
///
/// ```
/// use http::HeaderMap;
/// use tower_gateway::client_addr::{ForwardedHeader, TrustedProxies};
///
/// let proxies = TrustedProxies::none()
///     .trust("10.0.0.0/8".parse().unwrap())
///     .header(ForwardedHeader::XForwardedFor);
///
/// let mut headers = HeaderMap::new();
/// // The client wrote 6.6.6.6 itself; the proxy 10.0.0.2 saw 203.0.113.9.
/// headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
/// headers.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
///
/// let from_proxy = proxies.resolve("10.0.0.1".parse().unwrap(), &headers);
/// assert_eq!(from_proxy, "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
/// // From anyone else, the headers are ignored.
/// let direct = proxies.resolve("192.0.2.1".parse().unwrap(), &headers);
/// assert_eq!(direct, "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts no proxy: the client is always the peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Also trusts proxies in `net` to report the client in the forwarding
    /// header.
    pub fn trust(mut self, net: IpNet) -> Self {
        self.nets.push(net);
        self
    }

    /// Which forwarding header trusted proxies set (default
    /// `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// The forwarding header read.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether `ip` is a trusted proxy.
    ///
    /// ```
    /// use tower_gateway::client_addr::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::none().trust("10.0.0.0/8".parse().unwrap());
    /// assert!(proxies.is_trusted("10.1.2.3".parse().unwrap()));
    /// assert!(!proxies.is_trusted("192.0.2.1".parse().unwrap()));
    /// ```
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// The client's address for a request from `peer` with `headers` (see
    /// the [type documentation](Self)).
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.is_trusted(client) {
            return client;
        }
        let (name, parse, quoted): (_, fn(&str) -> Option<IpAddr>, _) = match self.header {
            ForwardedHeader::XForwardedFor => ("x-forwarded-for", parse_xff_hop, false),
            ForwardedHeader::Forwarded => (header::FORWARDED.as_str(), parse_forwarded_hop, true),
        };
        let mut budget = MAX_HOPS;
        // Every line of the header, in order, forms one list (RFC 9110
        // §5.3): the last line's last element is the nearest hop.
        for line in headers.get_all(name).iter().rev() {
            let Ok(text) = line.to_str() else {
                // Not text: the list cannot be read past here.
                return client;
            };
            for hop in RevElements::new(text, quoted) {
                let hop = hop.trim();
                if hop.is_empty() {
                    continue;
                }
                if budget == 0 {
                    return client;
                }
                budget -= 1;
                let Some(ip) = parse(hop) else {
                    return client;
                };
                client = canonical(ip);
                if !self.is_trusted(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// Who sent a request: the client address the [`ClientAddrLayer`]
/// resolved, and the connection's peer it was resolved from.
///
/// The layer puts it into request extensions; read it with
/// [`ResolvedClient::of`], which falls back to the peer's [`ClientAddr`]
/// when the layer is absent, so every consumer (rate limiting, the auth
/// failure budget, logs) sees the same client either way.
///
/// It is a separate type rather than a new meaning of [`ClientAddr`]:
/// `ClientAddr` stays what the server knows for certain (the TCP peer, which
/// the proxy appends to `X-Forwarded-For` as the hop it received the request
/// from), and code that inserts or reads it keeps its meaning.
///
/// [`ClientAddrLayer`]: super::ClientAddrLayer
///
/// ```
/// use tower_gateway::client_addr::{ClientAddr, ResolvedClient};
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(ClientAddr("[::ffff:192.0.2.7]:50123".parse().unwrap()));
/// // No layer ran: the client is the peer (IPv4-mapped addresses as IPv4).
/// let client = ResolvedClient::of(request.extensions()).unwrap();
/// assert_eq!(client.ip(), "192.0.2.7".parse::<std::net::IpAddr>().unwrap());
/// assert!(!client.is_forwarded());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResolvedClient {
    ip: IpAddr,
    peer: SocketAddr,
}

impl ResolvedClient {
    /// The client `ip` of a request that came from `peer`. IPv4-mapped IPv6
    /// addresses are stored as IPv4.
    pub fn new(ip: IpAddr, peer: SocketAddr) -> Self {
        Self {
            ip: canonical(ip),
            peer,
        }
    }

    /// The client of a request that came straight from `peer`.
    pub fn direct(peer: SocketAddr) -> Self {
        Self::new(peer.ip(), peer)
    }

    /// The request's client: the one a [`ClientAddrLayer`](super::ClientAddrLayer)
    /// resolved, else the peer ([`ClientAddr`]), else `None`.
    pub fn of(extensions: &Extensions) -> Option<Self> {
        match extensions.get::<Self>() {
            Some(resolved) => Some(*resolved),
            None => extensions
                .get::<ClientAddr>()
                .map(|&ClientAddr(peer)| Self::direct(peer)),
        }
    }

    /// The client's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The connection's peer: the client, or the nearest proxy.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether a trusted proxy named the client (it is not the peer).
    pub fn is_forwarded(&self) -> bool {
        self.ip != canonical(self.peer.ip())
    }
}

/// The elements of one header line from the right, split at commas; with
/// `quoted`, commas inside quoted strings (RFC 9110 §5.6.4) do not split.
struct RevElements<'a> {
    rest: Option<&'a str>,
    quoted: bool,
}

impl<'a> RevElements<'a> {
    fn new(line: &'a str, quoted: bool) -> Self {
        Self {
            rest: Some(line),
            quoted,
        }
    }
}

impl<'a> Iterator for RevElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let bytes = rest.as_bytes();
        let mut in_quotes = false;
        for i in (0..bytes.len()).rev() {
            match bytes[i] {
                b'"' if self.quoted && !is_escaped(bytes, i) => in_quotes = !in_quotes,
                b',' if !in_quotes => {
                    self.rest = Some(&rest[..i]);
                    return Some(&rest[i + 1..]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest)
    }
}

/// Whether the byte at `i` follows an odd run of backslashes (a
/// quoted-pair, RFC 9110 §5.6.4).
fn is_escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

fn parse_xff_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §6). An element
/// without one, or with two, names no client.
fn parse_forwarded_hop(element: &str) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_outside_quotes(element, b';') {
        let Some((name, value)) = pair.trim().split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("for") {
            if node.is_some() {
                // RFC 7239 §4: a parameter occurs at most once per element.
                return None;
            }
            node = Some(value.trim());
        }
    }
    let node = node?;
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(rest) = node.strip_prefix('[') {
        // "[2001:db8::1]" or "[2001:db8::1]:4711"
        let (addr, port) = rest.split_once(']')?;
        if !(port.is_empty() || port.starts_with(':')) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // "192.0.2.43" or "192.0.2.43:47011"; "unknown" and "_hidden" do not parse.
    let addr = node.split_once(':').map_or(node, |(a, _)| a);
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `s` split at `sep` outside quoted strings.
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, &b) in current.as_bytes().iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if in_quotes => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b if b == sep && !in_quotes => {
                    rest = Some(&current[i + 1..]);
                    return Some(&current[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff() -> TrustedProxies {
        TrustedProxies::none().trust("10.0.0.0/8".parse().unwrap())
    }

    fn fwd() -> TrustedProxies {
        xff().header(ForwardedHeader::Forwarded)
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            TrustedProxies::none().resolve(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1")]);
        assert_eq!(xff().resolve(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        assert_eq!(fwd().resolve(ip("192.0.2.1"), &h), ip("192.0.2.1"));
    }

    #[test]
    fn xff_walks_right_to_left_past_trusted_proxies() {
        // The client forged "6.6.6.6"; proxy 10.0.0.2 saw 203.0.113.9.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn spoofed_leftmost_entries_are_ignored() {
        for forged in ["6.6.6.6", "6.6.6.6, 7.7.7.7", "10.0.0.9, 6.6.6.6"] {
            let h = headers(&[("x-forwarded-for", &format!("{forged}, 203.0.113.9"))]);
            assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        }
    }

    #[test]
    fn xff_lines_form_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.3"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // The real client on the first line, trusted hops on later ones.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Empty elements and lines are skipped.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9,,"),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", " , 10.0.0.2"),
        ]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn xff_hops_with_ports() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9:4711, [2001:db8::7]:80")]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("2001:db8::7"));
    }

    #[test]
    fn malformed_hop_stops_the_walk() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, garbage, 10.0.0.2")]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // A line that is not text stops it too.
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6")]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff10.0.0.5").unwrap(),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // No header at all: the trusted peer is all there is.
        assert_eq!(
            xff().resolve(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn at_most_max_hops_are_examined() {
        let chain = vec!["10.0.0.7"; MAX_HOPS + 1].join(", ");
        let h = headers(&[("x-forwarded-for", &format!("203.0.113.9, {chain}"))]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("10.0.0.7"));
        let chain = vec!["10.0.0.7"; MAX_HOPS - 1].join(", ");
        let h = headers(&[("x-forwarded-for", &format!("203.0.113.9, {chain}"))]);
        assert_eq!(xff().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn ipv4_mapped_ipv6() {
        // A dual-stack listener's peer, and a mapped address in the header.
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.9, ::ffff:10.0.0.2")]);
        assert_eq!(xff().resolve(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(xff().resolve(ip("::ffff:192.0.2.1"), &h), ip("192.0.2.1"));
    }

    #[test]
    fn forwarded_header_nodes() {
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.3"#,
        )]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=unknown, For=\"192.0.2.60:80\"")]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("192.0.2.60"));
        // `unknown` and obfuscated nodes stop the walk.
        let h = headers(&[("forwarded", "for=192.0.2.60, for=_hidden, for=10.0.0.3")]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("10.0.0.3"));
    }

    #[test]
    fn forwarded_lines_form_one_list() {
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.9;proto=https"),
            ("forwarded", "for=10.0.0.2;proto=http, for=10.0.0.3"),
        ]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_quoted_strings_do_not_split() {
        // The nearest proxy saw 203.0.113.9 and quoted the client's host,
        // which tries to smuggle elements and parameters.
        let h = headers(&[(
            "forwarded",
            r#"for=203.0.113.9;host="a, for=6.6.6.6;x=\"y, for=7.7.7.7", for=10.0.0.2"#,
        )]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = headers(&[(
            "forwarded",
            r#"host="x;for=6.6.6.6";for=203.0.113.9, for=10.0.0.2"#,
        )]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Two `for` in one element: malformed, the walk stops.
        let h = headers(&[("forwarded", "for=203.0.113.9;for=6.6.6.6, for=10.0.0.2")]);
        assert_eq!(fwd().resolve(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn resolved_client_falls_back_to_the_peer() {
        let mut ext = Extensions::new();
        assert_eq!(ResolvedClient::of(&ext), None);
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        ext.insert(ClientAddr(peer));
        assert_eq!(ResolvedClient::of(&ext), Some(ResolvedClient::direct(peer)));
        let resolved = ResolvedClient::new(ip("203.0.113.9"), peer);
        ext.insert(resolved);
        assert_eq!(ResolvedClient::of(&ext), Some(resolved));
        assert!(resolved.is_forwarded());
    }
}
