//! Readiness through `JwtAuthLayer`, `RbacLayer` and `NormalizePathLayer`,
//! with `tower-test` mocks as the inner service: a pending inner keeps the
//! layer pending, a request reaches the inner exactly once and only after
//! readiness, a refused request never reaches it, and a clone that was not
//! polled ready is never called (the mock panics if it is).
#![cfg(all(feature = "jwt", feature = "rbac"))]
mod support;

use std::task::Poll;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tower::Layer;
use tower_gateway::{
    auth::{Issuer, JwtAuthLayer, JwtKey},
    identity::{Identity, RoleSource},
    path::NormalizePathLayer,
    rbac::{Policy, RbacLayer, Rule},
    reject::ResponseBody,
};
use tower_test::mock::{self, Handle, Spawn};

type Req = Request<String>;
type Res = Response<String>;
type Mock = mock::Mock<Req, Res>;

fn jwt() -> JwtAuthLayer {
    JwtAuthLayer::builder()
        .issuer(
            Issuer::new(support::ISSUER)
                .audience(support::AUDIENCE)
                .key(JwtKey::hmac(support::HMAC_SECRET)),
        )
        .build()
        .unwrap()
}

fn rbac() -> RbacLayer {
    RbacLayer::new(
        Policy::builder()
            .rule(Rule::new("/orders").any_of(["admin"]))
            .deny_unmatched(true)
            .build()
            .unwrap(),
    )
}

fn bearer(roles: &[&str]) -> String {
    let token = support::mint(Algorithm::HS256, None, &support::claims("alice", roles));
    format!("Bearer {token}")
}

fn admin() -> Identity {
    Identity::from_claims(
        json!({ "sub": "alice", "roles": ["admin"] })
            .as_object()
            .cloned()
            .unwrap(),
        &RoleSource::default(),
    )
}

/// A request each layer lets through, and the path-and-query the inner
/// service must see for it.
fn good_request(layer: Which, uri: &str) -> Req {
    let mut request = Request::get(uri).body(String::new()).unwrap();
    match layer {
        Which::Jwt => {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer(&["admin"]).parse().unwrap());
        }
        Which::Rbac => {
            request.extensions_mut().insert(admin());
        }
        Which::Normalize => {}
    }
    request
}

/// A request each layer refuses, and the status it answers with.
fn bad_request(layer: Which) -> (Req, StatusCode) {
    match layer {
        Which::Jwt => {
            let request = Request::get("/orders")
                .header(header::AUTHORIZATION, "Bearer not.a.token")
                .body(String::new())
                .unwrap();
            (request, StatusCode::UNAUTHORIZED)
        }
        Which::Rbac => {
            // No identity.
            (
                Request::get("/orders").body(String::new()).unwrap(),
                StatusCode::UNAUTHORIZED,
            )
        }
        Which::Normalize => (
            Request::get("/public/..%2forders")
                .body(String::new())
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Jwt,
    Rbac,
    Normalize,
}

const ALL: [Which; 3] = [Which::Jwt, Which::Rbac, Which::Normalize];

/// The three layers share one service shape over the mock; this erases their
/// concrete types so each scenario is written once.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Layered = tower::util::BoxCloneService<Req, Response<ResponseBody<String>>, BoxError>;

fn render<S>(inner: S) -> tower_gateway::reject::Render<S> {
    tower_gateway::reject::RenderLayer::new().layer(inner)
}

fn layered(which: Which, inner: Mock) -> Layered {
    match which {
        Which::Jwt => tower::util::BoxCloneService::new(render(jwt().layer(inner))),
        Which::Rbac => tower::util::BoxCloneService::new(render(rbac().layer(inner))),
        Which::Normalize => {
            tower::util::BoxCloneService::new(render(NormalizePathLayer::new().layer(inner)))
        }
    }
}

fn spawn(which: Which) -> (Spawn<Layered>, Handle<Req, Res>) {
    mock::spawn_layer(tower::layer::layer_fn(move |inner| layered(which, inner)))
}

/// The next request the inner received; panics if there is none. Never
/// blocks: the mock records a request synchronously in `call`.
fn received(handle: &mut Handle<Req, Res>) -> (Req, mock::SendResponse<Res>) {
    match handle.poll_request() {
        Poll::Ready(Some(pair)) => pair,
        other => panic!(
            "the inner service received nothing: {:?}",
            other.map(|o| o.map(|_| ()))
        ),
    }
}

fn nothing_received(handle: &mut Handle<Req, Res>) -> bool {
    handle.poll_request().is_pending()
}

fn is_ready<S: tower::Service<Req>>(svc: &mut Spawn<S>) -> bool
where
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready() {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
        Poll::Pending => false,
    }
}

async fn body(response: Response<ResponseBody<String>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn pending_inner_keeps_the_layer_pending_until_it_is_ready() {
    for which in ALL {
        let (mut svc, mut handle) = spawn(which);
        handle.allow(0);
        assert!(!is_ready(&mut svc), "{which:?}");
        // Polling again while pending is fine and stays pending.
        assert!(!is_ready(&mut svc), "{which:?}");
        assert!(!svc.is_woken(), "{which:?}");

        handle.allow(1);
        assert!(
            svc.is_woken(),
            "{which:?}: the inner's wake-up must reach the caller"
        );
        assert!(is_ready(&mut svc), "{which:?}");

        let response = svc.call(good_request(which, "/orders/./7/../8?x=%2F"));
        let (request, reply) = received(&mut handle);
        // NormalizePath and RBAC rewrite the path; JWT auth passes it on as is.
        let want = match which {
            Which::Jwt => "/orders/./7/../8?x=%2F",
            Which::Rbac | Which::Normalize => "/orders/8?x=%2F",
        };
        assert_eq!(request.uri(), want, "{which:?}");
        assert!(
            nothing_received(&mut handle),
            "{which:?}: the request arrived twice"
        );
        reply.send_response(Response::new("from inner".into()));
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{which:?}");
        assert!(!response.body().is_rejection());
        assert_eq!(body(response).await, "from inner");

        // The one permit is used up: pending again.
        assert!(!is_ready(&mut svc), "{which:?}");
        assert!(nothing_received(&mut handle));
    }
}

#[tokio::test]
async fn jwt_identity_reaches_the_inner_service() {
    let (mut svc, mut handle) = spawn(Which::Jwt);
    assert!(is_ready(&mut svc));
    let response = svc.call(good_request(Which::Jwt, "/orders"));
    let (request, reply) = received(&mut handle);
    let identity = request
        .extensions()
        .get::<Identity>()
        .expect("identity in extensions");
    assert_eq!(identity.subject(), Some("alice"));
    assert!(identity.has_role("admin"));
    reply.send_response(Response::new(String::new()));
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn refused_requests_never_reach_the_inner_nor_use_its_capacity() {
    for which in ALL {
        let (mut svc, mut handle) = spawn(which);
        handle.allow(1);
        assert!(is_ready(&mut svc), "{which:?}");
        let (bad, status) = bad_request(which);
        let response = svc.call(bad).await.unwrap();
        assert_eq!(response.status(), status, "{which:?}");
        assert!(response.body().is_rejection(), "{which:?}");
        assert!(
            nothing_received(&mut handle),
            "{which:?}: a refused request reached the inner"
        );

        // The inner's one permit is still there for the next request.
        assert!(is_ready(&mut svc), "{which:?}");
        let response = svc.call(good_request(which, "/orders"));
        let (request, reply) = received(&mut handle);
        assert_eq!(request.uri(), "/orders", "{which:?}");
        reply.send_response(Response::new("ok".into()));
        assert_eq!(
            response.await.unwrap().status(),
            StatusCode::OK,
            "{which:?}"
        );
        assert!(nothing_received(&mut handle), "{which:?}");
        assert!(!is_ready(&mut svc), "{which:?}: the permit was used");
    }
}

#[tokio::test]
async fn a_clone_that_was_not_polled_ready_is_never_called() {
    for which in ALL {
        let (inner, mut handle) = mock::pair::<Req, Res>();
        handle.allow(2);
        let mut first = Spawn::new(layered(which, inner));
        assert!(is_ready(&mut first), "{which:?}");
        // Cloned after `first` became ready: `second`'s inner is a fresh mock
        // clone that was never polled. The mock panics if a layer calls an
        // inner that was not polled ready, so `first.call` proves the layer
        // uses the inner it polled (JwtAuth swaps it out, keeping the clone
        // for next time).
        let mut second = Spawn::new(first.get_ref().clone());
        let first_response = first.call(good_request(which, "/orders/1"));
        let (request, first_reply) = received(&mut handle);
        assert_eq!(request.uri(), "/orders/1", "{which:?}");
        assert!(nothing_received(&mut handle), "{which:?}");

        assert!(is_ready(&mut second), "{which:?}");
        let second_response = second.call(good_request(which, "/orders/2"));
        let (request, second_reply) = received(&mut handle);
        assert_eq!(request.uri(), "/orders/2", "{which:?}");

        // Both permits are used: neither handle is ready, nothing more arrived.
        assert!(!is_ready(&mut first), "{which:?}");
        assert!(!is_ready(&mut second), "{which:?}");
        assert!(nothing_received(&mut handle), "{which:?}");

        // Responses go back to the right callers, in any order.
        second_reply.send_response(Response::new("two".into()));
        first_reply.send_response(Response::new("one".into()));
        assert_eq!(
            body(second_response.await.unwrap()).await,
            "two",
            "{which:?}"
        );
        assert_eq!(
            body(first_response.await.unwrap()).await,
            "one",
            "{which:?}"
        );

        // A new permit wakes both waiters; each sends one request.
        handle.allow(2);
        assert!(first.is_woken() && second.is_woken(), "{which:?}");
        assert!(is_ready(&mut first) && is_ready(&mut second), "{which:?}");
        let a = first.call(good_request(which, "/orders/3"));
        let b = second.call(good_request(which, "/orders/4"));
        for (i, want) in ["/orders/3", "/orders/4"].into_iter().enumerate() {
            let (request, reply) = received(&mut handle);
            assert_eq!(request.uri(), want, "{which:?}");
            reply.send_response(Response::new(i.to_string()));
        }
        assert_eq!(body(a.await.unwrap()).await, "0");
        assert_eq!(body(b.await.unwrap()).await, "1");
        assert!(nothing_received(&mut handle), "{which:?}");
    }
}

#[tokio::test]
async fn no_request_is_lost_or_duplicated_over_many_permits() {
    // `Handle::poll_request` polls a Tokio channel, which answers `Pending`
    // once the task's cooperative budget is spent, even with a request
    // queued; this loop polls it far more often than the budget allows in
    // one turn, so the budget is lifted rather than yielded around.
    tokio::task::unconstrained(many_permits()).await;
}

async fn many_permits() {
    for which in ALL {
        let (mut svc, mut handle) = spawn(which);
        handle.allow(0);
        let mut refused = 0;
        for i in 0..24u32 {
            // Every request needs a permit first: the previous one used it.
            assert!(!is_ready(&mut svc), "{which:?} #{i}: permit not consumed");
            handle.allow(1);
            assert!(svc.is_woken(), "{which:?} #{i}");
            assert!(is_ready(&mut svc), "{which:?} #{i}");
            if i % 3 == 2 {
                // A refused request in between needs no permit and must not
                // take the one granted.
                let (bad, status) = bad_request(which);
                assert_eq!(svc.call(bad).await.unwrap().status(), status);
                refused += 1;
                assert!(nothing_received(&mut handle), "{which:?} #{i}");
                assert!(is_ready(&mut svc), "{which:?} #{i}: the permit was lost");
            }
            let uri = format!("/orders/{i}/./?n={i}");
            let response = svc.call(good_request(which, &uri));
            let (request, reply) = received(&mut handle);
            let want = match which {
                Which::Jwt => uri.clone(),
                Which::Rbac | Which::Normalize => format!("/orders/{i}/?n={i}"),
            };
            assert_eq!(request.uri(), want.as_str(), "{which:?} #{i}");
            assert!(nothing_received(&mut handle), "{which:?} #{i}: duplicated");
            reply.send_response(Response::new(format!("r{i}")));
            assert_eq!(body(response.await.unwrap()).await, format!("r{i}"));
        }
        assert_eq!(refused, 8, "{which:?}");
    }
}

#[tokio::test]
async fn inner_readiness_errors_pass_through() {
    for which in ALL {
        let (mut svc, mut handle) = spawn(which);
        handle.send_error("inner broke");
        match svc.poll_ready() {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "inner broke", "{which:?}"),
            _ => panic!("{which:?}: the inner's readiness error was not reported"),
        }
        assert!(nothing_received(&mut handle));
    }
}

#[tokio::test]
async fn options_and_methods_reach_the_inner_as_sent() {
    // The layers change the path only; method, headers and body pass through.
    for which in ALL {
        let (mut svc, mut handle) = spawn(which);
        assert!(is_ready(&mut svc));
        let mut request = good_request(which, "/orders");
        *request.method_mut() = Method::PATCH;
        *request.body_mut() = "payload".into();
        request
            .headers_mut()
            .insert("x-trace", "t-1".parse().unwrap());
        let response = svc.call(request);
        let (request, reply) = received(&mut handle);
        assert_eq!(request.method(), Method::PATCH, "{which:?}");
        assert_eq!(request.headers()["x-trace"], "t-1", "{which:?}");
        assert_eq!(request.body(), "payload", "{which:?}");
        reply.send_response(Response::new(String::new()));
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    }
}
