use http::{HeaderMap, header};

/// gRPC status codes used by the gateway's rejections (gRPC `statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 3
    InvalidArgument,
    /// 4
    DeadlineExceeded,
    /// 7
    PermissionDenied,
    /// 8
    ResourceExhausted,
    /// 12
    Unimplemented,
    /// 14
    Unavailable,
    /// 16
    Unauthenticated,
}

impl GrpcCode {
    /// The numeric value sent in `grpc-status`.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::Unimplemented => 12,
            Self::Unavailable => 14,
            Self::Unauthenticated => 16,
        }
    }
}

/// Whether a request is a gRPC call: its `content-type` is `application/grpc`
/// or starts with `application/grpc+` / `application/grpc;` (gRPC over HTTP/2
/// spec, "Content-Type").
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let bytes = value.as_bytes();
    const PREFIX: &[u8] = b"application/grpc";
    bytes.len() >= PREFIX.len()
        && bytes[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(bytes.get(PREFIX.len()), None | Some(b'+') | Some(b';'))
}

/// Percent-encodes a `grpc-message` value as the gRPC spec requires: bytes
/// outside printable ASCII, and `%` itself, become `%XX`.
pub(crate) fn encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_ct(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_request(&with_ct("application/grpc")));
        assert!(is_grpc_request(&with_ct("application/grpc+proto")));
        assert!(is_grpc_request(&with_ct("Application/GRPC+json")));
        assert!(!is_grpc_request(&with_ct("application/grpc-web")));
        assert!(!is_grpc_request(&with_ct("application/json")));
        assert!(!is_grpc_request(&HeaderMap::new()));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(encode_grpc_message("100% ok\né"), "100%25 ok%0A%C3%A9");
    }
}
