//! Finding the bearer token in a request.

use std::borrow::Cow;

use http::{HeaderMap, Uri, header};

use super::AuthError;

/// Where tokens are looked for besides `Authorization: Bearer`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSources {
    pub(crate) cookie: Option<String>,
    pub(crate) query: Option<String>,
    pub(crate) max_len: usize,
}

impl TokenSources {
    /// Finds the one token of the request.
    ///
    /// More than one token — two `Authorization` headers, a header plus a
    /// cookie or query parameter, a repeated cookie or parameter — is refused
    /// even when one of them is valid: which one a later hop reads is not
    /// ours to guess (token smuggling).
    pub(crate) fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
    ) -> Result<Option<Cow<'a, str>>, AuthError> {
        let mut found: Option<Cow<'a, str>> = None;
        let mut put = |token: Cow<'a, str>| {
            if found.replace(token).is_some() {
                Err(AuthError::Multiple)
            } else {
                Ok(())
            }
        };

        let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
        if let Some(value) = authorization.next() {
            if authorization.next().is_some() {
                return Err(AuthError::Multiple);
            }
            let value = value.to_str().map_err(|_| AuthError::Malformed)?;
            if let Some(token) = bearer_token(value)? {
                put(Cow::Borrowed(token))?;
            }
        }
        if let Some(name) = &self.cookie {
            for value in headers.get_all(header::COOKIE) {
                // Split the raw bytes: another cookie's non-ASCII value (raw
                // UTF-8 from `document.cookie`, or one tossed in by a sibling
                // subdomain) must not refuse a request; only the value of
                // our cookie has to be text.
                for pair in value.as_bytes().split(|&b| b == b';') {
                    let (k, v) = match pair.iter().position(|&b| b == b'=') {
                        Some(at) => (&pair[..at], &pair[at + 1..]),
                        None => (pair, &[][..]),
                    };
                    // Names and values are trimmed the way servers read them
                    // (Go's net/http, most frameworks trim around `=`):
                    // `access_token =x` skipped here would pass as anonymous
                    // while the upstream reads it as the token.
                    if k.trim_ascii() == name.as_bytes() {
                        let v = std::str::from_utf8(v.trim_ascii())
                            .map_err(|_| AuthError::Malformed)?
                            .trim_matches('"');
                        put(Cow::Borrowed(v))?;
                    }
                }
            }
        }
        if let (Some(name), Some(query)) = (&self.query, uri.query()) {
            // `;` too: servers that still split queries on it (Python's
            // `parse_qs` before 3.9.2, Bottle, Tornado) would otherwise read
            // a token in `?x=1;access_token=...` that we never saw. A token
            // never contains `;`, so this cannot cut a real one short.
            for pair in query.split(['&', ';']) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(k).ok_or(AuthError::Malformed)?;
                if k == name.as_str() {
                    put(percent_decode(v).ok_or(AuthError::Malformed)?)?;
                }
            }
        }
        match found {
            Some(token) if token.is_empty() => Err(AuthError::Malformed),
            Some(token) if token.len() > self.max_len => Err(AuthError::TooLarge),
            Some(token) if !token.bytes().all(is_token68) => Err(AuthError::Malformed),
            other => Ok(other),
        }
    }
}

/// `Bearer <token>` with the scheme matched case-insensitively (RFC 7235
/// §2.1). Another scheme means "no bearer token"; `Bearer` with nothing
/// after it is malformed.
fn bearer_token(value: &str) -> Result<Option<&str>, AuthError> {
    let value = value.trim();
    // The scheme ends at any whitespace, not only SP: `Bearer<TAB>token`
    // read as "another scheme" would pass as anonymous under
    // `allow_anonymous` while upstreams that split on whitespace read the
    // token. RFC 7235 allows only SP there, so a tab makes it malformed.
    let (scheme, rest) = value.split_at(value.find([' ', '\t']).unwrap_or(value.len()));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains([' ', '\t']) {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

/// RFC 6750 §2.1 `b64token` characters.
fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn percent_decode(input: &str) -> Option<Cow<'_, str>> {
    if !input.contains(['%', '+']) {
        return Some(Cow::Borrowed(input));
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sources() -> TokenSources {
        TokenSources {
            cookie: Some("access_token".into()),
            query: Some("access_token".into()),
            max_len: 64,
        }
    }

    fn run(headers: &[(&str, &str)], uri: &str) -> Result<Option<String>, AuthError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        sources()
            .extract(&map, &uri)
            .map(|t| t.map(|t| t.into_owned()))
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(
            run(&[("authorization", "bEaReR abc")], "/")
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(run(&[("authorization", "Basic abc")], "/").unwrap(), None);
    }

    #[test]
    fn empty_or_odd_tokens_are_malformed() {
        assert_eq!(
            run(&[("authorization", "Bearer")], "/"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            run(&[("authorization", "Bearer ")], "/"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            run(&[("authorization", "Bearer a b")], "/"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            run(&[("authorization", "Bearer a\"b")], "/"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            run(
                &[("authorization", &format!("Bearer {}", "a".repeat(65)))],
                "/"
            ),
            Err(AuthError::TooLarge)
        );
    }

    #[test]
    fn smuggled_second_tokens_are_refused() {
        let two_headers = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert_eq!(run(&two_headers, "/"), Err(AuthError::Multiple));
        assert_eq!(
            run(
                &[("authorization", "Bearer a"), ("cookie", "access_token=b")],
                "/"
            ),
            Err(AuthError::Multiple)
        );
        assert_eq!(
            run(&[("authorization", "Bearer a")], "/x?access_token=b"),
            Err(AuthError::Multiple)
        );
        assert_eq!(
            run(&[], "/x?access_token=a&acc%65ss_token=b"),
            Err(AuthError::Multiple)
        );
        assert_eq!(
            run(&[("cookie", "access_token=a; access_token=b")], "/"),
            Err(AuthError::Multiple)
        );
        assert_eq!(
            run(&[("cookie", "x=1; access_token=a")], "/")
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            run(&[], "/x?access_token=a.b").unwrap().as_deref(),
            Some("a.b")
        );
        assert_eq!(run(&[], "/x?access_token=%zz"), Err(AuthError::Malformed));
    }
}
