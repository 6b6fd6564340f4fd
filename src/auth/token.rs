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
            if let Some(token) = bearer_token(value.as_bytes())? {
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
            Some(token)
                if !token
                    .bytes()
                    .fold(true, |ok, b| ok & TOKEN68[usize::from(b)]) =>
            {
                Err(AuthError::Malformed)
            }
            other => Ok(other),
        }
    }
}

/// `Bearer <token>` with the scheme matched case-insensitively (RFC 7235
/// §2.1). Another scheme means "no bearer token"; `Bearer` with nothing
/// after it is malformed.
fn bearer_token(value: &[u8]) -> Result<Option<&str>, AuthError> {
    // Bytes, not `str` methods: a token runs to hundreds of bytes, and
    // each `str` pass over it (UTF-8 check, char-pattern searches) costs
    // more than the rest of a cached verification.
    let value = value.trim_ascii();
    // The scheme ends at any whitespace, not only SP: `Bearer<TAB>token`
    // read as "another scheme" would pass as anonymous under
    // `allow_anonymous` while upstreams that split on whitespace read the
    // token. RFC 7235 allows only SP there, so a tab makes it malformed.
    let scheme_end = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Another scheme is not ours to read, but a value that is not
        // text at all is malformed whatever its scheme.
        return if value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            Ok(None)
        } else {
            Err(AuthError::Malformed)
        };
    }
    // Only SP separates scheme and token; a tab there is malformed.
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = &rest[start..];
    // Visible ASCII only: no whitespace inside, nothing that is not text.
    // A fold, not `all`: without the early exit the check vectorizes.
    let visible = token
        .iter()
        .fold(true, |ok, &b| ok & (b > 0x20) & (b < 0x7f));
    if token.is_empty() || !visible {
        return Err(AuthError::Malformed);
    }
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| AuthError::Malformed)
}

/// RFC 6750 §2.1 `b64token` characters, as a table: a token is hundreds
/// of bytes, and a lookup per byte costs a fraction of a range test chain.
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    table
};

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

    /// The reading of `Authorization` before it worked on bytes: every
    /// value must still be read the same way.
    fn bearer_token_reference(value: &[u8]) -> Result<Option<String>, AuthError> {
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
        if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(AuthError::Malformed);
        }
        let value = value.trim();
        let (scheme, rest) = value.split_at(value.find([' ', '\t']).unwrap_or(value.len()));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let token = rest.trim_start_matches(' ');
        if token.is_empty() || token.contains([' ', '\t']) {
            return Err(AuthError::Malformed);
        }
        Ok(Some(token.to_owned()))
    }

    #[test]
    fn bearer_token_reads_values_as_before() {
        let cases: &[&[u8]] = &[
            b"Bearer abc.def.ghi",
            b"bearer abc",
            b"BEARER   abc",
            b"  Bearer abc  ",
            b"Bearer\tabc",
            b"Bearer  \tabc",
            b"Bearer abc def",
            b"Bearer abc\t",
            b"Bearer",
            b"Bearer ",
            b"Basic dXNlcjpwdw==",
            b"Basic \xff",
            b"Bearer \xffabc",
            b"Bearer a\x7fb",
            b"Bearerabc",
            b"Token abc",
            b"",
            b"\tBearer abc",
        ];
        for &case in cases {
            let got = bearer_token(case).map(|t| t.map(str::to_owned));
            let want = bearer_token_reference(case);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn bearer_token_reads_short_values_as_before() {
        // Every value of up to three bytes after each prefix, over bytes
        // that matter: separators, controls, DEL, non-ASCII.
        let alphabet: &[u8] = b"aB= \t\x01\x7f\x80\xff,\"";
        let mut tails: Vec<Vec<u8>> = vec![Vec::new()];
        for &a in alphabet {
            tails.push(vec![a]);
            for &b in alphabet {
                tails.push(vec![a, b]);
                for &c in alphabet {
                    tails.push(vec![a, b, c]);
                }
            }
        }
        for prefix in [
            &b""[..],
            b"Bearer ",
            b"bearer",
            b"Bearer  ",
            b"Basic ",
            b" Bearer\t",
        ] {
            for tail in &tails {
                let case = [prefix, &tail[..]].concat();
                let got = bearer_token(&case).map(|t| t.map(str::to_owned));
                let want = bearer_token_reference(&case);
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{:?}",
                    String::from_utf8_lossy(&case)
                );
            }
        }
    }

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
