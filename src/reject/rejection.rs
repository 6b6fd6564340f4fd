use std::borrow::Cow;

use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::grpc::GrpcCode;

/// Why a layer refused a request.
///
/// The kind decides the HTTP status and the gRPC status; both are fixed here so
/// that every layer maps the same condition the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The request is malformed in a way the gateway refuses to guess about
    /// (for example an encoded `/` in the path): 400, gRPC `INVALID_ARGUMENT`.
    BadRequest,
    /// No valid credentials: 401 with `WWW-Authenticate`, gRPC `UNAUTHENTICATED`.
    Unauthenticated,
    /// The request head is larger than the gateway forwards: 431 (RFC 6585
    /// §5), gRPC `RESOURCE_EXHAUSTED`.
    HeadersTooLarge,
    /// Valid credentials without the required permission: 403, gRPC
    /// `PERMISSION_DENIED`.
    Forbidden,
    /// No route for the request: 404, gRPC `UNIMPLEMENTED`.
    NotFound,
    /// A route exists but not for this method: 405 with `Allow`, gRPC
    /// `UNIMPLEMENTED`.
    MethodNotAllowed,
    /// A rate limit is exhausted: 429 with `Retry-After`, gRPC
    /// `RESOURCE_EXHAUSTED`.
    TooManyRequests,
    /// The upstream answered in a way the gateway cannot use: 502, gRPC
    /// `UNAVAILABLE`.
    BadGateway,
    /// The gateway or an upstream cannot serve now: 503, gRPC `UNAVAILABLE`.
    Unavailable,
    /// The upstream did not answer in time: 504, gRPC `DEADLINE_EXCEEDED`.
    GatewayTimeout,
    /// The client did not send its request (body) in time: 408, gRPC
    /// `DEADLINE_EXCEEDED`.
    RequestTimeout,
    /// The request uses a feature the gateway does not implement (a
    /// transfer coding other than chunked): 501, gRPC `UNIMPLEMENTED`.
    NotImplemented,
}

impl RejectionKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC status code for this kind (gRPC status code documentation).
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            Self::BadRequest => GrpcCode::InvalidArgument,
            Self::Unauthenticated => GrpcCode::Unauthenticated,
            Self::Forbidden => GrpcCode::PermissionDenied,
            Self::NotFound | Self::MethodNotAllowed | Self::NotImplemented => {
                GrpcCode::Unimplemented
            }
            Self::TooManyRequests | Self::HeadersTooLarge => GrpcCode::ResourceExhausted,
            Self::BadGateway | Self::Unavailable => GrpcCode::Unavailable,
            Self::GatewayTimeout | Self::RequestTimeout => GrpcCode::DeadlineExceeded,
        }
    }
}

/// A refusal: its kind, a machine-readable code, a detail safe to show a
/// client, and the headers the response must carry.
///
/// The `detail` is shown to clients, so layers put nothing in it that helps an
/// attacker (no key material, no internal addresses); the `code` is a short
/// stable token such as `invalid_token` or `insufficient_role` that metrics and
/// logs can use.
#[derive(Debug, Clone)]
pub struct Rejection {
    kind: RejectionKind,
    code: &'static str,
    detail: Cow<'static, str>,
    // Boxed, and only when there are headers: most refusals carry none, and
    // a small `Rejection` keeps every `Result<_, Rejection>` small.
    headers: Option<Box<HeaderMap>>,
}

/// What [`Rejection::headers`] returns for a rejection without headers.
static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl Rejection {
    /// A rejection of the given kind.
    pub fn new(
        kind: RejectionKind,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            kind,
            code,
            detail: detail.into(),
            headers: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectionKind::BadRequest, code, detail)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750 §3).
    ///
    /// `error` is one of RFC 6750's codes (`invalid_token`, ...) or `None`
    /// when the request carried no credentials at all (RFC 6750 §3.1: "the
    /// resource server SHOULD NOT include an error code").
    pub fn unauthenticated(
        realm: Option<&str>,
        error: Option<&'static str>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        let detail = detail.into();
        let mut challenge = String::from("Bearer");
        let mut sep = " ";
        if let Some(realm) = realm {
            challenge.push_str(sep);
            push_quoted_param(&mut challenge, "realm", realm);
            sep = ", ";
        }
        if let Some(error) = error {
            challenge.push_str(sep);
            push_quoted_param(&mut challenge, "error", error);
            challenge.push_str(", ");
            push_quoted_param(&mut challenge, "error_description", &detail);
        }
        let mut rejection = Self::new(
            RejectionKind::Unauthenticated,
            error.unwrap_or("missing_token"),
            detail,
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            rejection = rejection.with_header(header::WWW_AUTHENTICATE, value);
        }
        rejection
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(RejectionKind::Forbidden, "insufficient_role", detail)
    }

    /// 503 with an optional `Retry-After` in whole seconds.
    pub fn unavailable(
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        let mut rejection = Self::new(RejectionKind::Unavailable, code, detail);
        if let Some(secs) = retry_after_secs {
            rejection = rejection.with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        rejection
    }

    /// Adds a header the response must carry (`Retry-After`, `Allow`, ...).
    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.get_or_insert_default().append(name, value);
        self
    }

    /// The kind of refusal.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// A short, stable, machine-readable reason (`invalid_token`, ...).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// A human-readable explanation that is safe to show the client.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Headers the response must carry.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.as_deref().unwrap_or(&NO_HEADERS)
    }
}

/// Appends `name="value"` with `"` and `\` escaped as an RFC 9110 §5.6.4
/// quoted-string; characters a header value cannot hold are dropped.
fn push_quoted_param(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_without_credentials_has_no_error_code() {
        let r = Rejection::unauthenticated(Some("api"), None, "token required");
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api""#
        );
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn challenge_escapes_quotes_and_drops_controls() {
        let r = Rejection::unauthenticated(None, Some("invalid_token"), "a \"b\"\n\\c");
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="a \"b\"\\c""#
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let r = Rejection::unavailable("circuit_open", "try later", Some(0));
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
