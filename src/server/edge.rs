//! The edge layer: what every request must pass before any gateway layer
//! sees it.

use std::task::{Context, Poll};

use http::{Request, Response, Version, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    hop_by_hop::{HeaderScan, is_upgrade, known, remove_hop_by_hop},
    reject::{
        Rejection, RejectionKind, RenderFuture, Renderer, RequestHead, ResponseBody, ResponseFuture,
    },
};

/// Checks and cleans requests where they enter the gateway; apply it
/// outermost. [`serve`](super::serve) applies it for you; with another
/// server (`axum::serve`, hyper-util) wrap your service in it.
///
/// - Hop-by-hop headers (RFC 9110 §7.6.1) are removed, those a client
///   names in `Connection` included, once and before any layer runs — so a
///   client's `Connection: x-user-id` cannot remove the `x-user-id` a
///   layer sets later. Upgrades (`Connection: upgrade` + `Upgrade`) are
///   kept.
/// - A `Transfer-Encoding` other than a single `chunked` is answered 501
///   (RFC 9112 §6.1): hyper decodes the chunked framing only, and would
///   pass `gzip` bytes on as if they were the content.
/// - 400 for a request target with user info (`http://user:pw@host/`, RFC
///   9110 §4.2.4), for more than one `Host` or an invalid one, and for an
///   HTTP/1.1 request without `Host` (RFC 9112 §3.2) — hyper checks none of
///   these, and routing by host, `X-Forwarded-Host` and a preserved `Host`
///   would each pick one of several values.
///
/// The edge is also the stack's render step (see [`crate::reject`]): its own
/// refusals and those of every layer inside it are rendered here, once, by
/// its [`Renderer`] (problem JSON; gRPC trailers-only for gRPC requests).
/// The error type is the inner service's, so the layer fits under
/// `axum::serve` (which needs `Infallible`).
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_gateway::server::EdgeLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = ServiceBuilder::new()
///     .layer(EdgeLayer::new())
///     .service_fn(|request: Request<String>| async move {
///         // Named in `Connection`, hence removed before this runs.
///         assert!(!request.headers().contains_key("x-secret"));
///         Ok::<_, Infallible>(Response::new(String::from("ok")))
///     });
/// let request = Request::builder()
///     .uri("/")
///     .header("host", "example.com")
///     .header("connection", "x-secret")
///     .header("x-secret", "1")
///     .body(String::new())
///     .unwrap();
/// let response = service.clone().oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
///
/// let smuggled = Request::builder()
///     .uri("/")
///     .header("host", "example.com")
///     .header("transfer-encoding", "gzip, chunked")
///     .body(String::new())
///     .unwrap();
/// let response = service.oneshot(smuggled).await.unwrap();
/// assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct EdgeLayer {
    renderer: Renderer,
}

impl EdgeLayer {
    /// The edge layer, rendering refusals with the default [`Renderer`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders refusals (its own and those of the layers inside it) with
    /// `renderer`.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            renderer: self.renderer.clone(),
        }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    renderer: Renderer,
}

impl<S> Edge<S> {
    /// Wraps `inner`, rendering refusals with `renderer`.
    pub fn new(inner: S, renderer: Renderer) -> Self {
        Self { inner, renderer }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RenderFuture<ResponseFuture<S::Future, ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let scan = HeaderScan::of(request.headers());
        let future = if let Err(refusal) = check(&request, &scan) {
            ResponseFuture::rejected(
                refusal
                    .rejection()
                    .into_response(&RequestHead::of(&request)),
            )
        } else {
            if scan.has(known::HOP_BY_HOP) {
                let upgrade = scan.has(known::UPGRADE) && is_upgrade(request.headers());
                remove_hop_by_hop(request.headers_mut(), upgrade);
            }
            ResponseFuture::inner(self.inner.call(request))
        };
        RenderFuture::new(future, self.renderer.clone())
    }
}

/// Why a request may not enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TransferCoding,
    UserInfo,
    Host,
}

impl Refusal {
    fn rejection(self) -> Rejection {
        match self {
            Self::TransferCoding => Rejection::new(
                RejectionKind::NotImplemented,
                "unsupported_transfer_coding",
                "only the chunked transfer coding is supported",
            ),
            Self::UserInfo => Rejection::bad_request(
                "userinfo_in_target",
                "the request target must not carry user info",
            ),
            Self::Host => {
                Rejection::bad_request("invalid_host", "missing, repeated or invalid Host")
            }
        }
    }
}

/// Checks the request head: the scan says which headers are there, so a
/// usual request costs one lookup (`Host`).
fn check<B>(request: &Request<B>, scan: &HeaderScan) -> Result<(), Refusal> {
    let headers = request.headers();
    if scan.has(known::TRANSFER_ENCODING) {
        let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
        let chunked_only = codings.next().is_some_and(|first| {
            first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        }) && codings.next().is_none();
        if !chunked_only {
            return Err(Refusal::TransferCoding);
        }
    }
    if request
        .uri()
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(Refusal::UserInfo);
    }
    let valid = match scan.hosts() {
        0 => request.version() != Version::HTTP_11,
        // RFC 9112 §3.2: empty when the target has no authority.
        1 => headers
            .get(header::HOST)
            .is_some_and(|host| host.is_empty() || valid_host(host.as_bytes())),
        // HTTP/2 carries `:authority` in the URI; HTTP/1.0 may omit `Host`.
        _ => false,
    };
    if valid { Ok(()) } else { Err(Refusal::Host) }
}

/// Whether `host` is a `Host` value (RFC 9110 §7.2: `uri-host [ ":" port
/// ]`) without user info: a bracketed IP literal or a name of the
/// characters RFC 3986 allows, then an optional port of digits. Checked in
/// place — parsing it as an `Authority` would copy it. As `Authority`
/// does, a `%` is refused outside the brackets: no route or upstream
/// expects a percent-encoded name (RFC 3986 §3.2.2 allows one), and what
/// an upstream builds from a preserved `Host` or `X-Forwarded-Host`
/// (links, redirects) may decode it into a `/` or a `@`.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let (literal, after) = rest.split_at(end);
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'%' | b'v' | b'V'))
        {
            return false;
        }
        match &after[1..] {
            [] => (literal, None),
            [b':', port @ ..] => (literal, Some(port)),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        }
    };
    let name_ok = host.starts_with(b"[")
        || !name.is_empty()
            && name.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            });
    name_ok && port.is_none_or(|port| port.len() <= 5 && port.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status(request: &Request<()>) -> u16 {
        check(request, &HeaderScan::of(request.headers()))
            .map_or_else(|r| r.rejection().status().as_u16(), |()| 200)
    }

    #[test]
    fn host_rules() {
        let h11 = Version::HTTP_11;
        assert_eq!(status(&request(h11, "/", &[("host", "a:80")])), 200);
        assert_eq!(status(&request(h11, "/", &[("host", "")])), 200);
        assert_eq!(status(&request(h11, "/", &[])), 400);
        assert_eq!(
            status(&request(h11, "/", &[("host", "a"), ("host", "b")])),
            400
        );
        assert_eq!(status(&request(h11, "/", &[("host", "u@a")])), 400);
        assert_eq!(status(&request(h11, "/", &[("host", "a b")])), 400);
        assert_eq!(status(&request(h11, "http://a/", &[])), 400);
        assert_eq!(
            status(&request(h11, "http://u:p@a/", &[("host", "a")])),
            400
        );
        assert_eq!(status(&request(Version::HTTP_10, "/", &[])), 200);
        for ok in ["a.example:8080", "[::1]:80", "[::1]", "10.0.0.1", "a", "a:"] {
            assert_eq!(status(&request(h11, "/", &[("host", ok)])), 200, "{ok}");
        }
        for bad in [
            "a:b", "[::1", "[::1]x", "[]", "a:123456", "a/b", "a?b", "a:80:x", "[::1]@a", "a%2Fb",
            "%40a",
        ] {
            assert_eq!(status(&request(h11, "/", &[("host", bad)])), 400, "{bad}");
        }
        assert_eq!(status(&request(Version::HTTP_2, "https://a/", &[])), 200);
    }

    #[test]
    fn only_a_single_chunked_coding_passes() {
        let h11 = Version::HTTP_11;
        let te = |v: &'static str| request(h11, "/", &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(status(&te("chunked")), 200);
        assert_eq!(status(&te(" Chunked ")), 200);
        assert_eq!(status(&te("gzip, chunked")), 501);
        assert_eq!(status(&te("chunked, chunked")), 501);
        let two = request(
            h11,
            "/",
            &[
                ("host", "a"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(status(&two), 501);
    }

    /// What `valid_host` replaced: `Authority::try_from`, user info refused.
    fn authority_host(host: &[u8]) -> bool {
        http::uri::Authority::try_from(host).is_ok_and(|a| !a.as_str().contains('@'))
    }

    /// The refusals `valid_host` adds on purpose: a port that is not 1-5
    /// digits, an empty name, brackets anywhere but around a leading IP
    /// literal of hex digits, `:`, `.`, `%` and `v`.
    fn refused_on_purpose(host: &[u8]) -> bool {
        let port_bad = |port: &[u8]| port.len() > 5 || !port.iter().all(u8::is_ascii_digit);
        if let Some(rest) = host.strip_prefix(b"[") {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return true;
            };
            let literal = &rest[..end];
            literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b":.%vV".contains(&b))
                || match &rest[end + 1..] {
                    [] => false,
                    [b':', port @ ..] => port_bad(port),
                    _ => true,
                }
        } else if host.contains(&b'[') || host.contains(&b']') {
            true
        } else {
            match host.iter().rposition(|&b| b == b':') {
                Some(colon) => colon == 0 || port_bad(&host[colon + 1..]),
                None => false,
            }
        }
    }

    #[test]
    fn valid_host_accepts_nothing_authority_refused() {
        // Every string of up to three bytes over the characters that
        // matter to an authority (delimiters, brackets, user info,
        // percent, controls, non-ASCII), then longer cases.
        let alphabet: &[u8] = b"a1:[]@%.-_/?#v \"<>{}|\\^`!*,;=~\x00\x7f\x80\xff\t";
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for &a in alphabet {
            inputs.push(vec![a]);
            for &b in alphabet {
                inputs.push(vec![a, b]);
                for &c in alphabet {
                    inputs.push(vec![a, b, c]);
                }
            }
        }
        let long = [
            "a.example:8080",
            "A.EXAMPLE.",
            "a.example.:443",
            "[::1]:80",
            "[::1]:",
            "[fe80::1%25eth0]:80",
            "[::ffff:10.0.0.1]",
            "[1:2:3:4:5:6:7:8]:80",
            "[1:2:3:4:5:6:7:8:9]",
            "a:65535",
            "a:99999",
            "a:00080",
            "a:123456",
            "a%2Fb",
            "a%2e",
            "xn--bcher-kva.example",
            "u:p@a",
            "a@b:80",
            "[::1]@a",
            "a:80:80",
            "[::1]:80:80",
            "[::1]]",
        ];
        inputs.extend(long.iter().map(|s| s.as_bytes().to_vec()));
        for input in &inputs {
            let (old, new) = (authority_host(input), valid_host(input));
            let shown = String::from_utf8_lossy(input);
            assert!(!new || old, "{shown:?}: accepted, Authority refused it");
            assert!(
                new || !old || refused_on_purpose(input),
                "{shown:?}: refused, Authority accepted it"
            );
        }
        // What the differences look like.
        for (host, old, new) in [
            ("a.example:8080", true, true),
            ("[fe80::1%251]:80", true, true),
            // A zone named, not numbered: refused with the other letters.
            ("[fe80::1%25eth0]:80", true, false),
            ("a:", true, true),
            ("A.EXAMPLE.", true, true),
            ("a%2Fb", false, false),
            ("%", false, false),
            (":80", true, false),
            ("a:b", true, false),
            ("a:123456", true, false),
            ("[]", true, false),
            ("a[]", true, false),
            ("[v1.x]", true, false),
        ] {
            assert_eq!(
                (authority_host(host.as_bytes()), valid_host(host.as_bytes())),
                (old, new),
                "{host}"
            );
        }
    }
}
