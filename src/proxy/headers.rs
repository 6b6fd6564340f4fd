//! Header rewrites of a forwarding proxy (RFC 9110 §7.6).

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, header};

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
            if let Some(client) = client {
                // One allocation, handed to the header without a copy.
                use std::fmt::Write;
                let prior = headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .filter(|prior| !prior.trim().is_empty());
                let mut value = String::with_capacity(prior.map_or(0, |p| p.len() + 2) + 39);
                if let Some(prior) = prior {
                    value.push_str(prior);
                    value.push_str(", ");
                }
                let _ = write!(value, "{}", client.ip());
                if let Ok(value) = HeaderValue::try_from(value) {
                    headers.insert("x-forwarded-for", value);
                }
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
}
