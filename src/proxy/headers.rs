//! Header rewrites of a forwarding proxy (RFC 9110 §7.6).

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::client_addr::canonical;
use crate::hop_by_hop::{HeaderScan, known};

/// How the proxy tells the upstream about the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`.
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded: for=…;proto=…;host=…` (appended).
    Forwarded,
    /// Neither.
    None,
}

/// Adds the forwarding headers and `Via` (RFC 9110 §7.6.3).
///
/// `peer` is the connection's peer, the hop the gateway received the
/// request from: it is appended after every line of the header the request
/// carried, combined into one line (RFC 9110 §5.3: the lines are one list),
/// so an upstream walking the list from the right with the gateway's trusted
/// proxies finds the client the gateway resolved. `scan` says which of the
/// headers involved the request carries; those it lacks are not looked up.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    scan: &HeaderScan,
    style: ForwardedHeaders,
    peer: Option<SocketAddr>,
    proto: &'static str,
    original_host: Option<&HeaderValue>,
) {
    // Only the chosen style carries the hop the gateway vouches for; a
    // client's headers of the other style (and `X-Real-IP`, which nothing
    // here sets) would reach the upstream as if the gateway had checked
    // them, naming whatever client address the caller likes.
    let foreign = match style {
        ForwardedHeaders::XForwarded => known::FORWARDED | known::X_REAL_IP,
        ForwardedHeaders::Forwarded => {
            known::X_FORWARDED_FOR
                | known::X_FORWARDED_PROTO
                | known::X_FORWARDED_HOST
                | known::X_REAL_IP
        }
        ForwardedHeaders::None => 0,
    };
    // Never the gateway's: a client's `x_forwarded_for` would reach a CGI,
    // WSGI, Rack or PHP upstream as the `X-Forwarded-For` it trusts.
    if scan.has(known::FORWARDING_LOOKALIKE) {
        let lookalikes: Vec<HeaderName> = headers
            .keys()
            .filter(|name| known::is_forwarding_lookalike(name.as_str()))
            .cloned()
            .collect();
        for name in lookalikes {
            headers.remove(name);
        }
    }
    if scan.has(foreign) {
        for (bit, name) in [
            (known::FORWARDED, header::FORWARDED),
            (known::X_FORWARDED_FOR, X_FORWARDED_FOR),
            (known::X_FORWARDED_PROTO, X_FORWARDED_PROTO),
            (known::X_FORWARDED_HOST, X_FORWARDED_HOST),
            (known::X_REAL_IP, X_REAL_IP),
        ] {
            if foreign & bit != 0 && scan.has(bit) {
                headers.remove(name);
            }
        }
    }
    // Room for what is added below (forwarding headers and `Via`) at
    // once, rather than a growth step on the way.
    headers.reserve(4);
    match style {
        ForwardedHeaders::XForwarded => {
            if let Some(peer) = peer {
                // One allocation of the exact size, handed to the header
                // without a copy.
                let ip = IpText::of(canonical(peer.ip()));
                let mut value = if scan.has(known::X_FORWARDED_FOR) {
                    prior_list(headers, X_FORWARDED_FOR, ip.as_bytes().len())
                } else {
                    Vec::with_capacity(ip.as_bytes().len())
                };
                value.extend_from_slice(ip.as_bytes());
                set_list(headers, X_FORWARDED_FOR, value);
            }
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            match original_host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST, host.clone());
                }
                // No host to vouch for (HTTP/1.0): not the client's either.
                None => {
                    if scan.has(known::X_FORWARDED_HOST) {
                        headers.remove(X_FORWARDED_HOST);
                    }
                }
            }
        }
        ForwardedHeaders::Forwarded => {
            let host = original_host.and_then(|h| h.to_str().ok());
            let extra = 56 + proto.len() + host.map_or(0, |h| h.len() + 8);
            let mut value = if scan.has(known::FORWARDED) {
                prior_list(headers, header::FORWARDED, extra)
            } else {
                Vec::with_capacity(extra)
            };
            if let Some(peer) = peer {
                // RFC 7239 §6: IPv6 addresses are quoted and bracketed.
                match canonical(peer.ip()) {
                    ip @ IpAddr::V4(_) => {
                        value.extend_from_slice(b"for=");
                        value.extend_from_slice(IpText::of(ip).as_bytes());
                        value.push(b';');
                    }
                    IpAddr::V6(ip) => {
                        let _ = write!(value, "for=\"[{ip}]\";");
                    }
                }
            }
            value.extend_from_slice(b"proto=");
            value.extend_from_slice(proto.as_bytes());
            if let Some(host) = host {
                value.extend_from_slice(b";host=\"");
                value.extend(host.bytes().filter(|b| !matches!(b, b'"' | b'\\')));
                value.push(b'"');
            }
            set_list(headers, header::FORWARDED, value);
        }
        ForwardedHeaders::None => {}
    }
    const VIA: &str = "1.1 tower-gateway";
    let prior = if scan.has(known::VIA) {
        headers.get(header::VIA).map(|v| v.to_str())
    } else {
        None
    };
    let via = match prior {
        None => HeaderValue::from_static(VIA),
        Some(Ok(prior)) => match HeaderValue::try_from(format!("{prior}, {VIA}")) {
            Ok(value) => value,
            Err(_) => HeaderValue::from_static(VIA),
        },
        // An unreadable `Via` is not the gateway's to pass on.
        Some(Err(_)) => HeaderValue::from_static(VIA),
    };
    headers.insert(header::VIA, via);
}

/// An IP address in its usual text form, on the stack; IPv4 without the
/// formatting machinery, which costs more than the rest of the header
/// rewrite.
struct IpText {
    // The longest IPv6 text form is 45 bytes.
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(ip) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                let _ = write!(cursor, "{ip}");
                text.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Every non-blank line of `name`, joined into one list with `, ` and
/// followed by `, ` when there was any, with room for exactly `extra` more
/// bytes (a vector filled to its capacity becomes a `Bytes` without
/// another allocation).
/// The bytes are kept as they came: a line that is not text still ends an
/// upstream's walk of the list where it ended the gateway's.
fn prior_list(headers: &HeaderMap, name: HeaderName, extra: usize) -> Vec<u8> {
    let lines = || {
        headers
            .get_all(&name)
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
    };
    let len: usize = lines().map(|v| v.len() + 2).sum();
    let mut value = Vec::with_capacity(len + extra);
    for line in lines() {
        value.extend_from_slice(line);
        value.extend_from_slice(b", ");
    }
    value
}

/// Replaces every line of `name` with the one list in `value`.
fn set_list(headers: &mut HeaderMap, name: HeaderName, value: Vec<u8>) {
    // Joined valid header values are a valid header value; the check is
    // kept, and a failure leaves the header as it was.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn add_forwarding_scanned(
        headers: &mut HeaderMap,
        style: ForwardedHeaders,
        peer: Option<SocketAddr>,
        proto: &'static str,
        original_host: Option<&HeaderValue>,
    ) {
        let scan = HeaderScan::of(headers);
        add_forwarding(headers, &scan, style, peer, proto, original_host);
    }

    #[test]
    fn ip_text_form() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.99.100.255",
            "192.168.1.10",
            "255.255.255.255",
        ] {
            assert_eq!(IpText::of(ip.parse().unwrap()).as_bytes(), ip.as_bytes());
        }
        for ip in [
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(parsed).as_bytes(), parsed.to_string().as_bytes());
        }
    }

    #[test]
    fn ip_text_matches_display_for_every_octet() {
        for octet in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 9, octet),
                std::net::Ipv4Addr::new(1, octet, octet, 10),
            ] {
                let ip = IpAddr::V4(ip);
                assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
    }

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
    fn forwarding_headers_append() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.9"), ("via", "1.0 edge")]);
        let host = HeaderValue::from_static("shop.example");
        add_forwarding_scanned(
            &mut h,
            ForwardedHeaders::XForwarded,
            Some("192.0.2.1:5000".parse().unwrap()),
            "https",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["via"], "1.0 edge, 1.1 tower-gateway");

        let mut h = HeaderMap::new();
        add_forwarding_scanned(
            &mut h,
            ForwardedHeaders::Forwarded,
            Some("[2001:db8::1]:1".parse().unwrap()),
            "http",
            Some(&host),
        );
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=http;host=\"shop.example\""
        );
    }

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_removed() {
        for style in [
            ForwardedHeaders::XForwarded,
            ForwardedHeaders::Forwarded,
            ForwardedHeaders::None,
        ] {
            let mut h = map(&[
                ("x_forwarded_for", "6.6.6.6"),
                ("x-forwarded_host", "evil.example"),
                ("x_forwarded-proto", "https"),
                ("x_real_ip", "6.6.6.6"),
                ("x_request_id", "kept"),
                ("x_forwarded_for_note", "kept"),
            ]);
            add_forwarding_scanned(
                &mut h,
                style,
                Some("192.0.2.1:5000".parse().unwrap()),
                "http",
                None,
            );
            for gone in [
                "x_forwarded_for",
                "x-forwarded_host",
                "x_forwarded-proto",
                "x_real_ip",
            ] {
                assert!(!h.contains_key(gone), "{style:?}: {gone}");
            }
            assert_eq!(h["x_request_id"], "kept");
            assert_eq!(h["x_forwarded_for_note"], "kept");
        }
    }

    #[test]
    fn all_xff_lines_form_one_list() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
        ]);
        add_forwarding_scanned(
            &mut h,
            ForwardedHeaders::XForwarded,
            Some("[::ffff:10.0.0.1]:5000".parse().unwrap()),
            "http",
            None,
        );
        let lines: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(lines, ["6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.1"]);
        // Without a peer nothing is vouched for, and nothing is combined.
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        add_forwarding_scanned(&mut h, ForwardedHeaders::XForwarded, None, "http", None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 2);
    }

    #[test]
    fn all_forwarded_lines_form_one_list() {
        let mut h = map(&[
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=203.0.113.9;proto=https, for=10.0.0.2"),
            ("x-forwarded-for", "7.7.7.7"),
        ]);
        let host = HeaderValue::from_static("shop.\"example");
        add_forwarding_scanned(
            &mut h,
            ForwardedHeaders::Forwarded,
            Some("10.0.0.1:1".parse().unwrap()),
            "https",
            Some(&host),
        );
        let lines: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            lines,
            ["for=6.6.6.6, for=203.0.113.9;proto=https, for=10.0.0.2, \
              for=10.0.0.1;proto=https;host=\"shop.example\""]
        );
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn a_line_that_is_not_text_is_kept() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1.1.1.1").unwrap(),
        );
        add_forwarding_scanned(
            &mut h,
            ForwardedHeaders::XForwarded,
            Some("192.0.2.1:1".parse().unwrap()),
            "http",
            None,
        );
        assert_eq!(h["x-forwarded-for"].as_bytes(), b"\xff1.1.1.1, 192.0.2.1");
    }
}
