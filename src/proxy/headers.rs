//! Header rewrites of a forwarding proxy (RFC 9110 §7.6).

use std::net::SocketAddr;

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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
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
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    style: ForwardedHeaders,
    client: Option<SocketAddr>,
    proto: &str,
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
            if let Some(client) = client {
                let ip = client.ip().to_string();
                let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                    Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
                    _ => ip,
                };
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert("x-forwarded-for", value);
                }
            }
            if let Ok(value) = HeaderValue::from_str(proto) {
                headers.insert("x-forwarded-proto", value);
            }
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
            let mut element = String::new();
            if let Some(client) = client {
                // RFC 7239 §6: IPv6 addresses are quoted and bracketed.
                match client.ip() {
                    std::net::IpAddr::V4(ip) => element.push_str(&format!("for={ip}")),
                    std::net::IpAddr::V6(ip) => element.push_str(&format!("for=\"[{ip}]\"")),
                }
            }
            if !element.is_empty() {
                element.push(';');
            }
            element.push_str("proto=");
            element.push_str(proto);
            if let Some(host) = original_host.and_then(|h| h.to_str().ok()) {
                element.push_str(";host=\"");
                element.push_str(&host.replace(['"', '\\'], ""));
                element.push('"');
            }
            let value = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
                Some(prior) => format!("{prior}, {element}"),
                None => element,
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::FORWARDED, value);
            }
        }
        ForwardedHeaders::None => {}
    }
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, 1.1 tower-gateway"),
        None => "1.1 tower-gateway".to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, value);
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
}
