//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not
//! the message, and must not be forwarded.
//!
//! The edge removes them once, when a request enters the gateway — the
//! headers a client names in `Connection` included — so that no later step
//! can remove a header a gateway layer set (a client's `Connection:
//! x-user-id` must not strip the identity the auth layer asserted; the
//! CVE-2024-45410 class). The proxy removes only the fixed list from what
//! it forwards, and everything hop-by-hop from what it returns.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `Proxy-Connection`, which some clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Names the edge and the proxy look for, each a bit of [`HeaderScan`].
pub(crate) mod known {
    pub(crate) const CONNECTION: u32 = 1;
    pub(crate) const KEEP_ALIVE: u32 = 1 << 1;
    pub(crate) const PROXY_CONNECTION: u32 = 1 << 2;
    pub(crate) const PROXY_AUTHENTICATE: u32 = 1 << 3;
    pub(crate) const PROXY_AUTHORIZATION: u32 = 1 << 4;
    pub(crate) const TE: u32 = 1 << 5;
    pub(crate) const TRAILER: u32 = 1 << 6;
    pub(crate) const TRANSFER_ENCODING: u32 = 1 << 7;
    pub(crate) const UPGRADE: u32 = 1 << 8;
    pub(crate) const HOST: u32 = 1 << 9;
    pub(crate) const FORWARDED: u32 = 1 << 10;
    pub(crate) const X_FORWARDED_FOR: u32 = 1 << 11;
    pub(crate) const X_FORWARDED_PROTO: u32 = 1 << 12;
    pub(crate) const X_FORWARDED_HOST: u32 = 1 << 13;
    pub(crate) const X_REAL_IP: u32 = 1 << 14;
    pub(crate) const VIA: u32 = 1 << 15;
    /// A forwarding header spelled with `_` for `-` (`x_forwarded_for`):
    /// CGI, WSGI, Rack and PHP servers read it as the real one.
    pub(crate) const FORWARDING_LOOKALIKE: u32 = 1 << 16;

    /// The forwarding headers whose look-alikes are flagged.
    pub(crate) const FORWARDING_NAMES: [&str; 4] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
    ];

    /// Whether `name` is one of [`FORWARDING_NAMES`] with some `-` written
    /// as `_`.
    pub(crate) fn is_forwarding_lookalike(name: &str) -> bool {
        let sep = |c: u8| if c == b'_' { b'-' } else { c };
        name.contains('_')
            && FORWARDING_NAMES.iter().any(|known| {
                known.len() == name.len()
                    && known.bytes().zip(name.bytes()).all(|(k, n)| k == sep(n))
            })
    }

    /// Everything hop-by-hop, `Connection` (and what it names) included.
    pub(crate) const HOP_BY_HOP: u32 = CONNECTION
        | KEEP_ALIVE
        | PROXY_CONNECTION
        | PROXY_AUTHENTICATE
        | PROXY_AUTHORIZATION
        | TE
        | TRAILER
        | TRANSFER_ENCODING
        | UPGRADE;

    pub(super) fn of(name: &str) -> u32 {
        match name {
            "connection" => CONNECTION,
            "keep-alive" => KEEP_ALIVE,
            "proxy-connection" => PROXY_CONNECTION,
            "proxy-authenticate" => PROXY_AUTHENTICATE,
            "proxy-authorization" => PROXY_AUTHORIZATION,
            "te" => TE,
            "trailer" => TRAILER,
            "transfer-encoding" => TRANSFER_ENCODING,
            "upgrade" => UPGRADE,
            "host" => HOST,
            "forwarded" => FORWARDED,
            "x-forwarded-for" => X_FORWARDED_FOR,
            "x-forwarded-proto" => X_FORWARDED_PROTO,
            "x-forwarded-host" => X_FORWARDED_HOST,
            "x-real-ip" => X_REAL_IP,
            "via" => VIA,
            other if is_forwarding_lookalike(other) => FORWARDING_LOOKALIKE,
            _ => 0,
        }
    }
}

/// What a header section holds of the names the edge and the proxy act
/// on, its `Host` lines and its size, found in one pass over its fields.
///
/// Most requests carry none of those names but `Host`; with the scan in
/// hand, a step that would look each of them up (a hash and a probe per
/// name, and per removal) skips straight past.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeaderScan {
    found: u32,
    hosts: u32,
    list_size: usize,
}

impl HeaderScan {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            // The size as HTTP/2 counts it (RFC 9113 §6.5.2): name, value
            // and 32 bytes per field.
            scan.list_size += name.len() + value.len() + 32;
            let bit = known::of(name);
            scan.found |= bit;
            if bit == known::HOST {
                scan.hosts += 1;
            }
        }
        scan
    }

    /// Whether any of `names` (bits of [`known`]) is present.
    pub(crate) fn has(&self, names: u32) -> bool {
        self.found & names != 0
    }

    /// How many `Host` lines there are.
    pub(crate) fn hosts(&self) -> u32 {
        self.hosts
    }

    /// The section's size as HTTP/2 counts it.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn list_size(&self) -> usize {
        self.list_size
    }
}

/// Removes every hop-by-hop header from a response the proxy returns (one
/// pass over the names when there is none, as is usual).
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
pub(crate) fn strip_response(headers: &mut HeaderMap) {
    if HeaderScan::of(headers).has(known::HOP_BY_HOP) {
        remove_hop_by_hop(headers, false);
    }
}

/// Whether the request asks to switch protocols (WebSocket and the like):
/// `Connection: upgrade` with an `Upgrade` header.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including every header named in
/// `Connection`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade`
/// are kept so the upstream can switch protocols. `TE: trailers` is kept:
/// it is the one `TE` value HTTP/2 allows and gRPC requires.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    remove_fixed(headers, keep_upgrade);
}

/// Removes the fixed list of hop-by-hop headers only — not the ones a
/// `Connection` header names, which the edge removed before any layer ran
/// (see the module docs). Keeps `TE: trailers`, and with `keep_upgrade`
/// `Connection: upgrade` and `Upgrade`.
pub(crate) fn remove_fixed(headers: &mut HeaderMap, keep_upgrade: bool) {
    let te_trailers = headers.contains_key(header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers, gzip"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["accept", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrades_keep_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn fixed_removal_keeps_headers_named_in_connection() {
        let mut h = map(&[
            ("connection", "x-user-id"),
            ("x-user-id", "alice"),
            ("te", "gzip"),
        ]);
        remove_fixed(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["x-user-id"]);
    }

    /// The edge and the proxy skip removal when the scan finds no
    /// hop-by-hop name; that must leave exactly what removal would.
    #[test]
    fn removal_skipped_only_when_it_would_change_nothing() {
        let cases: &[&[(&str, &str)]] = &[
            &[("host", "a"), ("accept", "*/*")],
            &[("host", "a"), ("x-user-id", "alice")],
            &[("te", "trailers")],
            &[("te", "gzip")],
            &[("keep-alive", "timeout=5")],
            &[("proxy-connection", "keep-alive")],
            &[("proxy-authorization", "Basic x")],
            &[("proxy-authenticate", "Basic")],
            &[("trailer", "x-checksum")],
            &[("transfer-encoding", "chunked")],
            &[("upgrade", "websocket")],
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            &[("connection", "x-user-id"), ("x-user-id", "alice")],
            &[("connection", "close")],
            // Look-alikes that are not hop-by-hop and must stay.
            &[
                ("x-connection", "close"),
                ("connection_", "x"),
                ("tes", "x"),
            ],
            &[
                ("proxy_authorization", "Basic x"),
                ("transfer_encoding", "x"),
            ],
        ];
        for case in cases {
            for keep_upgrade in [false, true] {
                let mut always = map(case);
                let upgrade = keep_upgrade && is_upgrade(&always);
                remove_hop_by_hop(&mut always, upgrade);
                let mut gated = map(case);
                let scan = HeaderScan::of(&gated);
                if scan.has(known::HOP_BY_HOP) {
                    let upgrade = keep_upgrade && scan.has(known::UPGRADE) && is_upgrade(&gated);
                    remove_hop_by_hop(&mut gated, upgrade);
                }
                assert_eq!(gated, always, "{case:?}");

                let mut always = map(case);
                remove_fixed(&mut always, upgrade);
                let mut gated = map(case);
                if HeaderScan::of(&gated).has(known::HOP_BY_HOP) {
                    remove_fixed(&mut gated, upgrade);
                }
                assert_eq!(gated, always, "{case:?}");
            }
            let mut always = map(case);
            remove_hop_by_hop(&mut always, false);
            let mut gated = map(case);
            strip_response(&mut gated);
            assert_eq!(gated, always, "{case:?}");
        }
    }

    #[test]
    fn scan_counts_every_host_line_and_sizes_like_http2() {
        let h = map(&[("host", "a"), ("host", "b"), ("accept", "*/*")]);
        let scan = HeaderScan::of(&h);
        assert_eq!(scan.hosts(), 2);
        assert!(scan.has(known::HOST) && !scan.has(known::HOP_BY_HOP));
        assert_eq!(scan.list_size(), (4 + 1 + 32) * 2 + 6 + 3 + 32);
    }
}
