//! The crate's one path normalization.
//!
//! RBAC, routing and proxying must decide on the very path the upstream will
//! receive, or an attacker picks a spelling that one of them reads
//! differently (`/public/%2e%2e/orders`, `//orders`, `/%6frders`). So the path
//! is normalized once, at the edge, with [`normalize`]:
//!
//! - percent-encoded *unreserved* characters (RFC 3986 §2.3: `A-Z a-z 0-9 - .
//!   _ ~`) are decoded, other percent-encodings are kept with upper-case hex
//!   (RFC 3986 §6.2.2.1-2);
//! - dot-segments are removed (RFC 3986 §5.2.4), after that decoding, so an
//!   encoded `%2e%2e` is a dot-segment too; `..` never climbs above `/`;
//! - runs of `/` collapse to one.
//!
//! Input that different servers read differently is refused, never guessed
//! at: an encoded `/` (`%2F`) or `\` (`%5C`), a raw `\`, an encoded NUL, a
//! malformed percent-encoding, and `;` (which Java servlet containers treat as
//! the start of path parameters, so `/orders;x` reaches `/orders` there).
//!
//! Strict mode ([`NormalizePathLayer::reject_double_encoding`], off by
//! default) also refuses `%25` followed by two hex digits: an upstream (or a
//! framework in front of it) that percent-decodes twice reads
//! `/public/%252e%252e/orders` as `/public/../orders`, a path the gateway
//! never authorized. RFC 3986 §2.4 makes `%25` plain data — a literal `%`
//! in a file name or search term — so strict mode also refuses such
//! legitimate paths; turn it on when an upstream decodes twice, or when no
//! path of yours carries a literal `%` followed by two hex digits.
//!
//! [`NormalizePathLayer`] applies it to requests: it rejects bad paths with
//! 400, rewrites the request URI to the normalized path (the query is kept
//! verbatim) and stores the [`NormalizedPath`] in the request extensions, where
//! RBAC and routing pick it up instead of normalizing again.
//!
//! ```
//! use tower_gateway::path::{normalize, PathError};
//!
//! assert_eq!(normalize("/public/%2e%2e//orders/./7").unwrap().as_str(), "/orders/7");
//! assert_eq!(normalize("/%6frders").unwrap().as_str(), "/orders");
//! assert_eq!(normalize("/orders%2f7"), Err(PathError::EncodedSeparator));
//! ```

mod layer;

#[cfg(feature = "rbac")]
pub(crate) use layer::apply;
pub use layer::{NormalizePath, NormalizePathLayer};
pub(crate) use layer::{path_rejection, rewrite_path};

use std::{borrow::Cow, fmt};

/// A request path after [`normalize`]: starts with `/`, has no dot-segments,
/// no empty segments (except a trailing slash), and no percent-encoded
/// unreserved characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath(std::sync::Arc<str>);

impl NormalizedPath {
    /// Wraps a path that [`normalize`] produced.
    pub(crate) fn from_normalized(path: String) -> Self {
        Self(path.into())
    }

    /// The normalized path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The non-empty segments of the path: `/orders/7/` yields `orders`, `7`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Debug for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NormalizedPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a path was refused; every variant is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator, which servers disagree on.
    #[error("encoded '/' or '\\' in path")]
    EncodedSeparator,
    /// A raw `\`, which some servers treat as `/`.
    #[error("'\\' in path")]
    Backslash,
    /// `%00`.
    #[error("encoded NUL in path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    InvalidEncoding,
    /// `;`, which servlet containers read as path parameters.
    #[error("';' in path")]
    Semicolon,
    /// A byte that may not appear in a path (controls, space, non-ASCII).
    #[error("invalid character in path")]
    InvalidCharacter,
    /// `%25` followed by two hex digits (`%252e`): an encoded
    /// percent-encoding, refused only in strict mode
    /// ([`NormalizePathLayer::reject_double_encoding`]).
    #[error("double percent-encoding in path")]
    DoubleEncoding,
}

/// Whether a normalized path holds a percent-encoded `%` that starts
/// another percent-encoding (`%252e`, `%2541`): what an upstream that
/// decodes twice reads as `.` or `A`. Normalization never decodes `%25`
/// and spells kept encodings in upper case, so this is a plain search.
pub(crate) fn is_double_encoded(normalized: &str) -> bool {
    normalized
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
}

/// Normalizes a request path (see the [module documentation](self)).
///
/// Borrows nothing from `path` in the result; costs one allocation.
/// `*` (the `OPTIONS *` asterisk-form) is returned as is.
pub fn normalize(path: &str) -> Result<NormalizedPath, PathError> {
    normalize_cow(path).map(|p| NormalizedPath(p.into()))
}

/// Like [`normalize`], borrowing `path` when it is already normal.
pub(crate) fn normalize_cow(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let bytes = path.as_bytes();
    if bytes[0] != b'/' {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => needs_work = true,
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'/' if matches!(bytes.get(i + 1), Some(b'/') | Some(b'.')) => needs_work = true,
            b'!'..=b'~' => {}
            _ => return Err(PathError::InvalidCharacter),
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes percent-encoded unreserved characters; keeps the others encoded,
/// upper-cased. Never decodes twice: `%252e` stays `%252e`.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::InvalidEncoding);
        };
        let value = hi << 4 | lo;
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0 => return Err(PathError::Nul),
            v if is_unreserved(v) => out.push(v as char),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(v >> 4)] as char);
                out.push(HEX[usize::from(v & 0xf)] as char);
            }
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, also dropping empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn already_normal_paths_are_unchanged() {
        for p in [
            "/",
            "/orders",
            "/orders/7",
            "/orders/",
            "/a.b/c..d/.e",
            "/~user/x-y_z",
        ] {
            assert_eq!(n(p).unwrap(), p, "{p}");
            if !p.contains("/.") {
                assert!(matches!(normalize_cow(p).unwrap(), Cow::Borrowed(_)), "{p}");
            }
        }
    }

    #[test]
    fn bypass_spellings_normalize_to_the_same_path() {
        let cases = [
            ("/orders/../orders", "/orders"),
            ("//orders", "/orders"),
            ("/%6frders", "/orders"),
            ("/%6Frders", "/orders"),
            ("/public/%2e%2e/orders", "/orders"),
            ("/public/%2E%2e/orders", "/orders"),
            ("/public/..%2forders", "err"),
            ("/./orders", "/orders"),
            ("/orders/.", "/orders/"),
            ("/orders/7/..", "/orders/"),
            ("/../../orders", "/orders"),
            ("/a//b///c", "/a/b/c"),
            ("/..", "/"),
            ("", "/"),
            ("/a/%7e", "/a/~"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%3b", "/a/%3B"),
            ("/a/%252e%252e", "/a/%252e%252e"),
        ];
        for (input, want) in cases {
            let got = n(input).unwrap_or_else(|_| "err".into());
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(n("/orders%2f7"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/orders%2F7"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/orders%5c7"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/orders\\7"), Err(PathError::Backslash));
        assert_eq!(n("/orders%00"), Err(PathError::Nul));
        assert_eq!(n("/orders%"), Err(PathError::InvalidEncoding));
        assert_eq!(n("/orders%2"), Err(PathError::InvalidEncoding));
        assert_eq!(n("/orders%zz"), Err(PathError::InvalidEncoding));
        assert_eq!(n("/orders;x"), Err(PathError::Semicolon));
        assert_eq!(n("orders"), Err(PathError::NotAbsolute));
        assert_eq!(n("/a b"), Err(PathError::InvalidCharacter));
        assert_eq!(n("/é"), Err(PathError::InvalidCharacter));
    }

    #[test]
    fn double_encoding_is_detected_after_normalization() {
        for (input, double) in [
            ("/public/%252e%252e/orders", true),
            ("/public/%252E/x", true),
            ("/a/%2541", true),
            // `%32%65` decodes to `2e` first: `%25` + `2e` is still found.
            ("/a/%25%32%65", true),
            ("/a/%25", false),
            ("/a/%25zz", false),
            ("/a/%25-2e", false),
            ("/a/100%2Boff", false),
            ("/orders", false),
        ] {
            let path = normalize(input).unwrap();
            assert_eq!(is_double_encoded(path.as_str()), double, "{input}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for p in ["/a/%2e/b", "//x/../y/", "/%41%42", "/a/%c3%a9"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
