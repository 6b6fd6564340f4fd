//! The request ID: taken from the client when trusted, generated otherwise.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The header that carries the request ID, both ways: `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request ID taken from a client, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The ID of one request, as sent upstream in `x-request-id` and returned
/// to the client; [`RequestIdLayer`] puts it into request extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh ID: 128 random bits as 32 lower-case hex digits.
    ///
    /// Unique, not secret: it comes from a fast non-cryptographic generator,
    /// so nothing may rely on it being unguessable.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bits = fastrand::u128(..);
        let mut digits = [0u8; 32];
        for digit in digits.iter_mut().rev() {
            *digit = HEX[(bits & 0xf) as usize];
            bits >>= 4;
        }
        // 32 hex digits are always a valid header value.
        Self(HeaderValue::from_bytes(&digits).unwrap_or(HeaderValue::from_static("0")))
    }

    /// A client's ID, if it is one the gateway passes on: 1 to
    /// [`MAX_REQUEST_ID_LEN`] visible ASCII characters (`!` to `~`), so it
    /// cannot smuggle separators or control characters into logs, and one
    /// client cannot make every log line it causes arbitrarily long.
    pub fn from_client(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| (b'!'..=b'~').contains(b));
        valid.then(|| Self(value.clone()))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        // Both constructors admit visible ASCII only.
        self.0.to_str().unwrap_or_default()
    }

    /// The ID as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Gives every request an ID (see the [module documentation](super)).
///
/// By default the gateway generates it, whatever the client sent: a
/// client's `x-request-id` is replaced, so IDs in logs are the gateway's
/// own (Envoy's edge default). With [`trust_incoming(true)`] a client's ID
/// is kept when it is 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters,
/// and replaced by a generated one otherwise (never refused: the ID is an
/// aid, not a reason to fail a request).
///
/// The ID is set as the request's `x-request-id` (so the upstream gets it),
/// stored as a [`RequestId`] extension, recorded as `gateway.request_id` on
/// the current span, and returned to the client in the response's
/// `x-request-id`. Place it outermost, before any layer that can refuse:
/// the default renderer then adds `request_id` to problem+json bodies.
///
/// [`trust_incoming(true)`]: RequestIdLayer::trust_incoming
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer {
    trust_incoming: bool,
}

impl RequestIdLayer {
    /// Generates an ID for every request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a valid `x-request-id` a client sent (default `false`): for a
    /// gateway behind a proxy of your own that sets it.
    pub fn trust_incoming(mut self, trust: bool) -> Self {
        self.trust_incoming = trust;
        self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            trust_incoming: self.trust_incoming,
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    trust_incoming: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let incoming = match self.trust_incoming {
            true => request
                .headers()
                .get(REQUEST_ID)
                .and_then(RequestId::from_client),
            false => None,
        };
        let id = incoming.unwrap_or_else(RequestId::generate);
        tracing::Span::current().record("gateway.request_id", id.as_str());
        let value = id.header_value().clone();
        request.headers_mut().insert(REQUEST_ID, value.clone());
        request.extensions_mut().insert(id);
        RequestIdFuture {
            inner: self.inner.call(request),
            id: Some(value),
        }
    }
}

pin_project! {
    /// The response future of [`RequestIdService`]: returns the ID to the
    /// client.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            // The gateway's ID, not whatever an upstream answered with.
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

impl<F> fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdFuture")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn client_ids_are_bounded_visible_ascii() {
        let ok = HeaderValue::from_static("abc-123_X.y");
        assert_eq!(RequestId::from_client(&ok).unwrap().as_str(), "abc-123_X.y");
        for bad in ["", "has space", "tab\there"] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert!(RequestId::from_client(&value).is_none(), "{bad:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_REQUEST_ID_LEN + 1)).unwrap();
        assert!(RequestId::from_client(&long).is_none());
        let max = HeaderValue::from_str(&"a".repeat(MAX_REQUEST_ID_LEN)).unwrap();
        assert!(RequestId::from_client(&max).is_some());
        let high = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(RequestId::from_client(&high).is_none());
    }
}
