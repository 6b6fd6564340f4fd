use std::{
    borrow::Cow,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use tower_service::Service;

use super::AuthMode;
use super::{AuthError, ResponseFuture, layer::Shared, verifier::VerifyFailure};
use crate::{
    client_addr::ResolvedClient, identity::Identity, reject::RequestHead, route::MatchedRoute,
};

/// The service of [`JwtAuthLayer`](super::JwtAuthLayer).
#[derive(Clone)]
pub struct JwtAuth<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for JwtAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn is_cors_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone was not polled ready; keep it for next time and use the
        // one that was.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = &*self.shared;

        // Whatever happens next, a client never gets to assert an identity
        // header to the upstream.
        strip_identity_headers(&shared.stripped, request.headers_mut());
        if shared.preflight_passthrough && is_cors_preflight(&request) {
            record("skipped", None);
            return ResponseFuture::inner(inner.call(request));
        }

        // The matched route's mode, else the layer's own setting.
        let mode = request
            .extensions()
            .get::<MatchedRoute>()
            .and_then(|route| route.setting::<AuthMode>().copied());
        let allow_anonymous = match mode {
            Some(AuthMode::None) => {
                record("skipped", None);
                return ResponseFuture::inner(inner.call(request));
            }
            Some(AuthMode::Optional) => true,
            Some(AuthMode::Required) => false,
            None => shared.allow_anonymous,
        };
        let extracted = shared.sources.extract(request.headers(), request.uri());
        // The budget is checked before anything looks at the token: an
        // address that spent it costs one hash lookup per request.
        let spent = match &extracted {
            Ok(None) => None,
            Ok(Some(_)) | Err(_) => budget_spent(shared, &request),
        };
        let outcome = match (extracted, spent) {
            (Ok(None), _) if allow_anonymous => {
                record("anonymous", None);
                return ResponseFuture::inner(inner.call(request));
            }
            (Ok(None), _) => Err(Failure::Now(AuthError::Missing)),
            (_, Some(retry_after)) => Err(Failure::Now(AuthError::FailureBudgetExhausted {
                retry_after,
            })),
            (Ok(Some(token)), None) => shared
                .verifier
                .verify(&token)
                .map_err(|failure| Failure::Retry(failure, token)),
            (Err(error), None) => Err(Failure::Now(error)),
        };
        match outcome {
            Ok(identity) => match admit(shared, &mut request, identity) {
                Ok(()) => ResponseFuture::inner(inner.call(request)),
                Err(error) => ResponseFuture::rejected(reject(shared, &request, &error)),
            },
            Err(Failure::Retry(failure, token)) => {
                #[cfg(feature = "jwks")]
                if let Some((updated, wait)) = failure.refresh {
                    // Only a request that waits owns its token; a plain
                    // refusal (a negative-cache hit, say) allocates nothing.
                    let token = token.into_owned();
                    let shared = self.shared.clone();
                    return ResponseFuture::waiting(Box::pin(async move {
                        let verdict = shared
                            .verifier
                            .verify_after_refresh(&token, updated, wait, failure.error)
                            .await;
                        match verdict.and_then(|identity| admit(&shared, &mut request, identity)) {
                            Ok(()) => inner.call(request).await,
                            Err(error) => Ok(reject(&shared, &request, &error)),
                        }
                    }));
                }
                let _ = token;
                ResponseFuture::rejected(reject(shared, &request, &failure.error))
            }
            Err(Failure::Now(error)) => {
                let response = reject(shared, &request, &error);
                let tarpit = shared
                    .budget
                    .as_ref()
                    .map_or(std::time::Duration::ZERO, |b| b.tarpit());
                if matches!(error, AuthError::FailureBudgetExhausted { .. }) && !tarpit.is_zero() {
                    // Held, not computed: a timer per flooded request.
                    return ResponseFuture::waiting(Box::pin(async move {
                        tokio::time::sleep(tarpit).await;
                        Ok(response)
                    }));
                }
                ResponseFuture::rejected(response)
            }
        }
    }
}

/// Removes every header in `stripped`, in any spelling that mixes `-` and
/// `_`. CGI (RFC 3875 §4.1.18) turns both into `_` in `HTTP_*` variables,
/// and so do WSGI, Rack and PHP: their applications read a client's
/// `X_User_Id` as the `X-User-Id` the gateway vouches for, so that spelling
/// must go too. Allocates only when such a spelling is present.
fn strip_identity_headers(stripped: &[HeaderName], headers: &mut HeaderMap) {
    if stripped.is_empty() {
        return;
    }
    for name in stripped {
        headers.remove(name);
    }
    let mut doomed = Vec::new();
    for name in headers.keys() {
        if stripped
            .iter()
            .any(|s| same_but_separators(s.as_str(), name.as_str()))
        {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether two (lower-case) header names are equal once `_` is read as `-`.
fn same_but_separators(a: &str, b: &str) -> bool {
    let sep = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| sep(x) == sep(y))
}

/// A failed verification: refuse now, or maybe after a JWKS refresh.
enum Failure<'a> {
    Now(AuthError),
    Retry(VerifyFailure, Cow<'a, str>),
}

/// Puts the verified identity (and what is derived from it) on the request.
fn admit<B>(
    shared: &Shared,
    request: &mut Request<B>,
    identity: Identity,
) -> Result<(), AuthError> {
    // Keep a verified mTLS peer that an earlier layer established.
    let identity = match request
        .extensions()
        .get::<Identity>()
        .and_then(Identity::peer)
    {
        Some(peer) => identity.with_peer(peer.clone()),
        None => identity,
    };
    if let Some(insert) = &shared.claims_inserter
        && !insert(&identity, request.extensions_mut())
    {
        return Err(AuthError::MissingClaim(
            "claims do not match the configured type".into(),
        ));
    }
    // HTTP drops leading and trailing whitespace from field values, so a
    // subject of " admin" would reach the upstream as "admin": one that a
    // header cannot carry exactly is not forwarded at all (the client's
    // header was stripped above, so the upstream sees none).
    if let Some(name) = &shared.forward_subject
        && let Some(value) = identity
            .subject()
            .filter(|s| s.trim() == *s)
            .and_then(|s| HeaderValue::from_str(s).ok())
    {
        request.headers_mut().insert(name.clone(), value);
    }
    // The upstream splits this list on commas and trims each item (RFC 9110
    // §5.6.1): a role value holding a comma or padded with whitespace
    // (`"viewer,admin"`, `" admin"`) would become another role there, one
    // RBAC here never granted. Such values are left out of the header.
    if let Some(name) = &shared.forward_roles {
        let roles: Vec<&str> = identity
            .roles()
            .iter()
            .map(String::as_str)
            .filter(|r| !r.contains(',') && r.trim() == *r)
            .collect();
        if let Ok(value) = HeaderValue::from_str(&roles.join(",")) {
            request.headers_mut().insert(name.clone(), value);
        }
    }
    record("authenticated", None);
    if let Some(subject) = identity.subject() {
        // Kept only by a span that declares the field (`TraceLayer::record_consumer`).
        tracing::Span::current().record("enduser.id", subject);
    }
    request.extensions_mut().insert(identity);
    Ok(())
}

/// Records the authentication result on the request's span (see
/// [`crate::trace`]); a no-op on a span without the fields.
fn record(result: &'static str, reason: Option<&'static str>) {
    let span = tracing::Span::current();
    span.record("gateway.auth.result", result);
    if let Some(reason) = reason {
        span.record("gateway.auth.reason", reason);
    }
}

/// The time until the client's failure budget window closes, if the
/// request came from an address that spent it.
fn budget_spent<B>(shared: &Shared, request: &Request<B>) -> Option<std::time::Duration> {
    let ledger = shared.budget.as_ref()?;
    ledger.exhausted(ResolvedClient::of(request.extensions())?.ip())
}

fn reject<B, ResBody>(shared: &Shared, request: &Request<B>, error: &AuthError) -> Response<ResBody>
where
    ResBody: Default,
{
    // Every refusal of a request that carried a token counts against its
    // address's budget; a refusal by the budget itself does not, or the
    // window would never close for a client that keeps retrying.
    let client = ResolvedClient::of(request.extensions()).map(|c| c.ip());
    if let Some(ledger) = &shared.budget
        && !matches!(
            error,
            AuthError::Missing | AuthError::FailureBudgetExhausted { .. }
        )
        && let Some(ip) = client
    {
        ledger.record_failure(ip);
    }
    tracing::debug!(target: "tower_gateway::auth", reason = error.reason(), client = ?client, "token refused");
    record("rejected", Some(error.reason()));
    if let Some(metrics) = &shared.metrics {
        metrics.rejected(error.reason());
    }
    error
        .rejection(shared.realm.as_deref())
        .into_response(&RequestHead::of(request))
}
