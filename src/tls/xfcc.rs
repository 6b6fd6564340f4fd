//! `X-Forwarded-Client-Cert`: telling upstreams who the verified client
//! is, in Envoy's format, and never letting a client say it itself.
//!
//! Envoy's documentation ("HTTP header manipulation",
//! `x-forwarded-client-cert`): the value is a comma-separated list of
//! elements, one per proxy; an element is a semicolon-separated list of
//! `Key=value` pairs (`By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`,
//! `DNS`; `URI` and `DNS` may repeat); a value containing `,`, `;` or `=`
//! is double-quoted, and a double quote inside it is written `\"`;
//! `Subject` is always double-quoted. `Hash` is the hex SHA-256 digest of
//! the DER client certificate.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use super::PeerCertificate;
use crate::identity::PeerIdentity;

/// The header name (RFC 9110 field names are case-insensitive).
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Sets `X-Forwarded-Client-Cert` on every request to the identity of the
/// verified client certificate — and removes every copy the client sent,
/// whether or not the connection has a verified certificate (Envoy's
/// `SANITIZE_SET`): an upstream that trusts the header can only see what
/// this gateway verified.
///
/// The element carries, in this order: `By` (this gateway's own URI SAN,
/// when set with [`by`](Self::by)), `Hash` (SHA-256 of the DER leaf, from
/// the request's [`PeerCertificate`]), `Subject` (always quoted), one
/// `URI` per URI SAN (SPIFFE IDs) and one `DNS` per DNS SAN, from the
/// request's [`PeerIdentity`]. Both extensions are inserted by
/// [`serve`](super::serve) (through [`PeerIdentityLayer`](super::PeerIdentityLayer)).
///
/// Backslashes in values are written `\\`, so that a value ending in a
/// backslash cannot escape its closing quote. A value holding control
/// characters (which a header cannot carry) is left out of the element.
///
/// Put it around the service that forwards upstream (the proxy):
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_gateway::{
///     identity::PeerIdentity,
///     tls::{ForwardClientCertLayer, PeerCertificate},
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = ServiceBuilder::new()
///     .layer(ForwardClientCertLayer::new().by("spiffe://shop/gateway"))
///     .service_fn(|request: http::Request<()>| async move {
///         let xfcc = request.headers().get("x-forwarded-client-cert").cloned();
///         Ok::<_, std::convert::Infallible>(xfcc)
///     });
///
/// // What `tls::serve` inserts for a verified client:
/// let mut request = http::Request::builder()
///     .header("x-forwarded-client-cert", "URI=spiffe://shop/admin") // forged
///     .body(())
///     .unwrap();
/// request.extensions_mut().insert(PeerIdentity {
///     subject: "CN=orders".into(),
///     sans: vec!["spiffe://shop/orders".into(), "orders.internal".into()],
/// });
/// let certificate = PeerCertificate::new(vec![0x30, 0x00]);
/// let hash = certificate.sha256_hex();
/// request.extensions_mut().insert(certificate);
///
/// let xfcc = upstream.oneshot(request).await.unwrap().unwrap();
/// assert_eq!(
///     xfcc,
///     format!(
///         "By=spiffe://shop/gateway;Hash={hash};Subject=\"CN=orders\";\
///          URI=spiffe://shop/orders;DNS=orders.internal"
///     )
/// );
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ForwardClientCertLayer {
    by: Option<Arc<str>>,
}

impl ForwardClientCertLayer {
    /// Strips client-sent copies and sets the verified identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// This gateway's own identity, sent as `By` (Envoy: the URI SAN of
    /// the proxy's certificate, such as its SPIFFE ID).
    pub fn by(mut self, uri: impl Into<String>) -> Self {
        self.by = Some(Arc::from(uri.into()));
        self
    }
}

impl<S> Layer<S> for ForwardClientCertLayer {
    type Service = ForwardClientCert<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardClientCert {
            inner,
            by: self.by.clone(),
        }
    }
}

/// The service of [`ForwardClientCertLayer`].
#[derive(Debug, Clone)]
pub struct ForwardClientCert<S> {
    inner: S,
    by: Option<Arc<str>>,
}

impl<S, B> Service<Request<B>> for ForwardClientCert<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let headers = request.headers_mut();
        // Every copy, before anything else: `remove` drops all values.
        headers.remove(X_FORWARDED_CLIENT_CERT);
        let extensions = request.extensions();
        let value = xfcc_element(
            self.by.as_deref(),
            extensions.get::<PeerCertificate>(),
            extensions.get::<PeerIdentity>(),
        );
        if let Some(value) = value {
            request.headers_mut().insert(X_FORWARDED_CLIENT_CERT, value);
        }
        self.inner.call(request)
    }
}

/// The XFCC element for this peer, or `None` without a verified peer.
fn xfcc_element(
    by: Option<&str>,
    certificate: Option<&PeerCertificate>,
    peer: Option<&PeerIdentity>,
) -> Option<HeaderValue> {
    if certificate.is_none() && peer.is_none() {
        return None;
    }
    let mut element = String::with_capacity(256);
    let mut pair = |key: &str, value: &str, always_quote: bool| {
        if value.chars().any(char::is_control) {
            return;
        }
        if !element.is_empty() {
            element.push(';');
        }
        element.push_str(key);
        element.push('=');
        push_value(&mut element, value, always_quote);
    };
    if let Some(by) = by {
        pair("By", by, false);
    }
    if let Some(certificate) = certificate {
        pair("Hash", &certificate.sha256_hex(), false);
    }
    if let Some(peer) = peer {
        pair("Subject", &peer.subject, true);
        // A URI SAN always has a scheme (RFC 3986 §3), so a colon; a DNS
        // name never has one.
        for uri in peer.sans.iter().filter(|san| san.contains(':')) {
            pair("URI", uri, false);
        }
        for dns in peer.sans.iter().filter(|san| !san.contains(':')) {
            pair("DNS", dns, false);
        }
    }
    // Certificate text may hold non-ASCII (UTF-8) bytes: header values
    // carry them as opaque octets (RFC 9110 §5.5, obs-text).
    HeaderValue::from_bytes(element.as_bytes()).ok()
}

/// Appends `value`, double-quoted when it holds a delimiter (`,` `;` `=`),
/// a quote or a backslash, or when `always_quote`.
fn push_value(out: &mut String, value: &str, always_quote: bool) {
    let needs_quotes = always_quote
        || value
            .bytes()
            .any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b'\\'));
    if !needs_quotes {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(value: &str, always: bool) -> String {
        let mut out = String::new();
        push_value(&mut out, value, always);
        out
    }

    #[test]
    fn values_are_quoted_only_when_needed_and_escaped_inside_quotes() {
        assert_eq!(
            quoted("spiffe://shop/orders", false),
            "spiffe://shop/orders"
        );
        assert_eq!(quoted("a,b", false), "\"a,b\"");
        assert_eq!(quoted("a;b", false), "\"a;b\"");
        assert_eq!(quoted("k=v", false), "\"k=v\"");
        assert_eq!(quoted("say \"hi\"", false), "\"say \\\"hi\\\"\"");
        assert_eq!(quoted("ends\\", false), "\"ends\\\\\"");
        assert_eq!(quoted("CN=x", true), "\"CN=x\"");
        assert_eq!(quoted("plain", true), "\"plain\"");
    }

    #[test]
    fn no_peer_no_element_and_control_characters_are_left_out() {
        assert!(xfcc_element(Some("spiffe://gw"), None, None).is_none());
        let peer = PeerIdentity {
            subject: "CN=a\nb".into(),
            sans: vec!["spiffe://shop/a".into()],
        };
        let value = xfcc_element(None, None, Some(&peer)).unwrap();
        assert_eq!(value, "URI=spiffe://shop/a");
    }
}
