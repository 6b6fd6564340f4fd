//! Role-based authorization per method and path.
//!
//! [`RbacLayer`] reads the verified [`Identity`](crate::identity::Identity)
//! that [`JwtAuthLayer`](crate::auth::JwtAuthLayer) (or the mTLS helpers) put
//! into the request extensions and decides with a [`Policy`]:
//!
//! - no identity where one is needed → 401 (`WWW-Authenticate: Bearer`);
//! - an identity without the required role → 403;
//! - a path that cannot be normalized safely → 400 (see [`crate::path`]).
//!
//! Decisions are made on the [normalized path](crate::path), and the request
//! URI is rewritten to it, so the upstream receives exactly the path that was
//! authorized. In shadow mode ([`RbacLayer::shadow`]) the policy is evaluated
//! and its would-be denials are logged and counted ([`Policy::denials`]), but
//! nothing is blocked — the way to roll out a new policy safely.
//!
//! # Example
//!
//! One policy table for a whole gateway, with a role hierarchy:
//!
//! ```
//! use http::Method;
//! use tower::ServiceBuilder;
//! use tower_gateway::rbac::{Policy, RbacLayer, RoleHierarchy, Rule};
//!
//! let policy = Policy::builder()
//!     .rule(Rule::exact("/health").public())
//!     .rule(Rule::new("/orders").methods([Method::GET]).any_of(["admin"]))
//!     .rule(Rule::new("/orders").methods([Method::POST]).any_of(["user"]))
//!     .deny_unmatched(true)
//!     .build()?;
//! let rbac = RbacLayer::new(policy).hierarchy(RoleHierarchy::new().inherit("admin", ["user"]));
//!
//! let svc = ServiceBuilder::new()
//!     .layer(rbac)
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # Ok::<(), tower_gateway::rbac::PolicyError>(())
//! ```
//!
//! Per route in axum:
//!
//! ```
//! use axum::{Router, routing::delete};
//! use tower_gateway::rbac::RbacLayer;
//!
//! let app: Router = Router::new().route(
//!     "/orders/{id}",
//!     delete(|| async { "deleted" }).route_layer(RbacLayer::require_any(["admin"])),
//! );
//! ```

mod layer;
mod metrics;
mod policy;
mod route;

pub use layer::{Rbac, RbacLayer};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics::RbacMetrics;
pub use policy::{Decision, Policy, PolicyBuilder, PolicyError, Requirement, RoleHierarchy, Rule};
