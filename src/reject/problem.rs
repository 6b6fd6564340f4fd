use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::{Rejection, RenderRejection, RequestHead, grpc};
use crate::trace::{REQUEST_ID, RequestId};

/// The default renderer: RFC 9457 problem JSON for HTTP, trailers-only
/// `grpc-status` responses for gRPC.
///
/// HTTP body:
///
/// ```json
/// {"type":"about:blank","title":"Unauthorized","status":401,
///  "detail":"the access token is invalid","code":"invalid_token"}
/// ```
///
/// `type` is `about:blank`, so per RFC 9457 §4.2.1 `title` is the status
/// phrase; `code` is an extension member carrying [`Rejection::code`], and
/// `request_id` another, carrying the request's `x-request-id` when it has
/// a valid one (see [`RequestIdLayer`](crate::trace::RequestIdLayer)).
///
/// gRPC: HTTP 200, `content-type: application/grpc`, `grpc-status` and a
/// percent-encoded `grpc-message`, no body ("Trailers-Only" in the gRPC over
/// HTTP/2 spec).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl RenderRejection for ProblemJson {
    fn render(&self, rejection: &Rejection, request: &RequestHead<'_>) -> Response<Bytes> {
        let mut response = if grpc::is_grpc_request(request.headers) {
            let mut response = Response::new(Bytes::new());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                "grpc-status",
                HeaderValue::from(rejection.kind().grpc_code().as_i32()),
            );
            if let Ok(message) =
                HeaderValue::from_str(&grpc::encode_grpc_message(rejection.detail()))
            {
                headers.insert("grpc-message", message);
            }
            response
        } else {
            let status = rejection.status();
            // Only an ID fit to echo: bounded, visible ASCII.
            let request_id = request
                .headers
                .get(REQUEST_ID)
                .and_then(RequestId::from_client);
            let problem = Problem {
                r#type: "about:blank",
                title: status.canonical_reason().unwrap_or("Error"),
                status: status.as_u16(),
                detail: rejection.detail(),
                code: rejection.code(),
                request_id: request_id.as_ref().map(RequestId::as_str),
            };
            // Serializing a struct of strings and integers cannot fail.
            let body = serde_json::to_vec(&problem).unwrap_or_default();
            let mut response = Response::new(Bytes::from(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            response
        };
        if response.status() != StatusCode::OK || !rejection.headers().is_empty() {
            for (name, value) in rejection.headers() {
                response.headers_mut().append(name, value.clone());
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method, Uri};

    #[test]
    fn http_problem_json() {
        let headers = HeaderMap::new();
        let uri = Uri::from_static("/orders");
        let head = RequestHead::new(&Method::GET, &uri, &headers);
        let r =
            Rejection::unauthenticated(None, Some("invalid_token"), "the access token is invalid");
        let resp = ProblemJson.render(&r, &head);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["code"], "invalid_token");
        assert!(v.get("request_id").is_none());
    }

    #[test]
    fn problem_json_carries_the_request_id() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let uri = Uri::from_static("/orders");
        let head = RequestHead::new(&Method::GET, &uri, &headers);
        let resp = ProblemJson.render(&Rejection::forbidden("no"), &head);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["request_id"], "abc-123");
    }

    #[test]
    fn grpc_trailers_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let uri = Uri::from_static("/svc/Method");
        let head = RequestHead::new(&Method::POST, &uri, &headers);
        let resp = ProblemJson.render(&Rejection::forbidden("no"), &head);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(resp.headers()["grpc-message"], "no");
        assert!(resp.body().is_empty());
    }
}
