//! Header rewrites of a forwarding proxy (RFC 9110 §7.6).

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::client_addr::canonical;

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
/// proxies finds the client the gateway resolved.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    style: ForwardedHeaders,
    peer: Option<SocketAddr>,
    proto: &'static str,
    original_host: Option<&HeaderValue>,
) {
    // Only the chosen style carries the hop the gateway vouches for; a
    // client's headers of the other style (and `X-Real-IP`, which nothing
    // here sets) would reach the upstream as if the gateway had checked
    // them, naming whatever client address the caller likes.
    match style {
        ForwardedHeaders::XForwarded => {
            headers.remove(header::FORWARDED);
            headers.remove("x-real-ip");
        }
        ForwardedHeaders::Forwarded => {
            for name in [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-real-ip",
            ] {
                headers.remove(name);
            }
        }
        ForwardedHeaders::None => {}
    }
    match style {
        ForwardedHeaders::XForwarded => {
            if let Some(peer) = peer {
                // One allocation, handed to the header without a copy.
                let mut value = prior_list(headers, X_FORWARDED_FOR, 39);
                let _ = write!(value, "{}", canonical(peer.ip()));
                set_list(headers, X_FORWARDED_FOR, value);
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
            match original_host {
                Some(host) => {
                    headers.insert("x-forwarded-host", host.clone());
                }
                // No host to vouch for (HTTP/1.0): not the client's either.
                None => {
                    headers.remove("x-forwarded-host");
                }
            }
        }
        ForwardedHeaders::Forwarded => {
            let host = original_host.and_then(|h| h.to_str().ok());
            let extra = 56 + proto.len() + host.map_or(0, |h| h.len() + 8);
            let mut value = prior_list(headers, header::FORWARDED, extra);
            if let Some(peer) = peer {
                // RFC 7239 §6: IPv6 addresses are quoted and bracketed.
                let _ = match canonical(peer.ip()) {
                    IpAddr::V4(ip) => write!(value, "for={ip};"),
                    IpAddr::V6(ip) => write!(value, "for=\"[{ip}]\";"),
                };
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
    let via = match headers.get(header::VIA).map(|v| v.to_str()) {
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Every non-blank line of `name`, joined into one list with `, ` and
/// followed by `, ` when there was any, with room for `extra` more bytes.
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
        add_forwarding(
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
        add_forwarding(
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
    fn all_xff_lines_form_one_list() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
        ]);
        add_forwarding(
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
        add_forwarding(&mut h, ForwardedHeaders::XForwarded, None, "http", None);
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
        add_forwarding(
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
        add_forwarding(
            &mut h,
            ForwardedHeaders::XForwarded,
            Some("192.0.2.1:1".parse().unwrap()),
            "http",
            None,
        );
        assert_eq!(h["x-forwarded-for"].as_bytes(), b"\xff1.1.1.1, 192.0.2.1");
    }
}
