//! The authorization matrix (`--check`): for every route, method and role,
//! what the gateway does with the request.
//!
//! It is read from the gateway that the configuration builds — the route
//! table, each route's authentication mode, the RBAC layer's decision
//! (`RbacLayer::decide`) and each rate limit's plan
//! (`RateLimitLayer::plan`) — not from a second reading of the file, so it
//! cannot disagree with what is enforced.

use std::{collections::BTreeSet, fmt, net::SocketAddr};

use http::{Method, Request};
use tower_gateway::{
    auth::AuthMode,
    identity::{Identity, RoleSource},
    ratelimit::{ClientAddr, LimitPlan, MissingKey},
    rbac::Decision,
};

use super::{
    Built,
    config::{GatewayConfig, LimitRef, Who},
};

/// The pseudo-role of requests without a token.
pub const ANONYMOUS: &str = "anonymous";

/// What happens to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// Served without an identity (anyone may call).
    Public { limits: Vec<String> },
    /// Served to this role.
    Allow { limits: Vec<String> },
    /// Refused: 401 (no or ignored identity), 403 (missing role), 400 (no
    /// rate-limit key).
    Deny { status: u16 },
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, limits) = match self {
            Self::Public { limits } => ("public", limits),
            Self::Allow { limits } => ("allow", limits),
            Self::Deny { status } => return write!(f, "deny {status}"),
        };
        f.write_str(word)?;
        if !limits.is_empty() {
            write!(f, ", rate-limited: {}", limits.join(" + "))?;
        }
        Ok(())
    }
}

/// One route and method, a cell per role.
#[derive(Debug, Clone)]
pub struct Row {
    pub route: String,
    pub method: Method,
    pub cells: Vec<Cell>,
}

/// The matrix: `roles[0]` is [`ANONYMOUS`].
#[derive(Debug, Clone)]
pub struct Matrix {
    pub roles: Vec<String>,
    pub rows: Vec<Row>,
    /// Limits that apply to every request before authentication.
    pub notes: Vec<String>,
}

impl Matrix {
    /// The cell of a route (by template), method and role (for tests).
    #[allow(dead_code)]
    pub fn cell(&self, route: &str, method: &Method, role: &str) -> Option<&Cell> {
        let column = self.roles.iter().position(|r| r == role)?;
        self.rows
            .iter()
            .find(|row| row.route == route && row.method == *method)
            .and_then(|row| row.cells.get(column))
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table: Vec<Vec<String>> = vec![
            ["ROUTE", "METHOD"]
                .into_iter()
                .map(str::to_owned)
                .chain(self.roles.iter().cloned())
                .collect(),
        ];
        for row in &self.rows {
            table.push(
                [row.route.clone(), row.method.to_string()]
                    .into_iter()
                    .chain(row.cells.iter().map(ToString::to_string))
                    .collect(),
            );
        }
        let columns = table[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        for row in &table {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

/// Methods shown for a route that takes every method.
const ALL_METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Every role the configuration mentions: in rules, in rate-limit tiers,
/// in the role hierarchy (both sides), and the demo users' and clients'.
pub fn roles(config: &GatewayConfig) -> Vec<String> {
    let mut roles = BTreeSet::new();
    for route in &config.routes {
        for rule in &route.rules {
            if let Who::AnyOf(named) | Who::AllOf(named) = &rule.who {
                roles.extend(named.iter().cloned());
            }
        }
        for limit in &route.limits {
            if let LimitRef::Inline(spec) = limit {
                roles.extend(spec.tiers.iter().map(|(role, _)| role.clone()));
            }
        }
    }
    for spec in config.ratelimit.limits.values() {
        roles.extend(spec.tiers.iter().map(|(role, _)| role.clone()));
    }
    for (role, implied) in &config.rbac.hierarchy {
        roles.insert(role.clone());
        roles.extend(implied.iter().cloned());
    }
    if let Some(auth) = config.demo.as_ref().and_then(|d| d.auth_server.as_ref()) {
        for user in auth.users.iter().flatten() {
            roles.extend(user.roles.iter().cloned());
        }
        for client in auth.clients.iter().flatten() {
            roles.extend(client.roles.iter().cloned());
        }
    }
    roles.remove(ANONYMOUS);
    std::iter::once(ANONYMOUS.to_owned()).chain(roles).collect()
}

fn window_text(window: &tower_gateway::ratelimit::Window) -> String {
    let unit = match window.name() {
        "second" => "s",
        "minute" => "min",
        "hour" => "h",
        "day" => "d",
        other => other,
    };
    format!("{}/{unit}", window.limit())
}

/// The matrix of a built gateway; `config` supplies only the list of roles.
pub fn compute(config: &GatewayConfig, built: &Built) -> Matrix {
    let roles = roles(config);
    let mut rows = Vec::new();
    for matched in built.routes.iter() {
        let route = matched.route();
        // Without an auth layer no request ever carries an identity.
        let mode = if built.auth.is_some() {
            route
                .setting::<AuthMode>()
                .copied()
                .unwrap_or(AuthMode::Required)
        } else {
            AuthMode::None
        };
        let methods: Vec<Method> = if route.method_list().is_empty() {
            ALL_METHODS.to_vec()
        } else {
            route.method_list().to_vec()
        };
        for method in methods {
            let cells = roles
                .iter()
                .map(|role| {
                    let anonymous = role == ANONYMOUS;
                    if anonymous && mode == AuthMode::Required {
                        return Cell::Deny { status: 401 };
                    }
                    let mut request = Request::builder()
                        .method(method.clone())
                        .uri(route.prefix_str())
                        .body(())
                        .unwrap_or_default();
                    request.extensions_mut().insert(matched.clone());
                    request
                        .extensions_mut()
                        .insert(ClientAddr(SocketAddr::from(([192, 0, 2, 1], 40000))));
                    // `auth = "none"` ignores the token: the caller is
                    // anonymous whatever its roles.
                    if !anonymous && mode != AuthMode::None {
                        let claims =
                            serde_json::json!({ "sub": format!("matrix-{role}"), "roles": [role] });
                        let claims = claims.as_object().cloned().unwrap_or_default();
                        request
                            .extensions_mut()
                            .insert(Identity::from_claims(claims, &RoleSource::claim("roles")));
                    }
                    let has_identity = request.extensions().get::<Identity>().is_some();
                    match built.rbac.decide(&request) {
                        Ok(Decision::Allow) => {}
                        Ok(Decision::Unauthenticated) => return Cell::Deny { status: 401 },
                        Ok(Decision::Forbidden) => return Cell::Deny { status: 403 },
                        Err(_) => return Cell::Deny { status: 400 },
                    }
                    let mut limits = Vec::new();
                    for layer in route.rate_limits() {
                        match layer.plan(&request) {
                            LimitPlan::Counted { role, limit, .. } => {
                                let windows: Vec<String> =
                                    limit.windows().iter().map(window_text).collect();
                                let tier = role.map(|r| format!("[{r}]")).unwrap_or_default();
                                limits.push(format!(
                                    "{}{tier} {}",
                                    layer.scope(),
                                    windows.join(" ")
                                ));
                            }
                            LimitPlan::NoKey(MissingKey::Allow) => {}
                            LimitPlan::NoKey(_) => return Cell::Deny { status: 400 },
                            _ => {}
                        }
                    }
                    if has_identity {
                        Cell::Allow { limits }
                    } else {
                        Cell::Public { limits }
                    }
                })
                .collect();
            rows.push(Row {
                route: matched.template().as_str().to_owned(),
                method,
                cells,
            });
        }
    }
    let mut notes = Vec::new();
    if config.ratelimit.per_ip_second > 0 {
        notes.push(format!(
            "every request, before authentication: at most {}/s per client IP",
            config.ratelimit.per_ip_second
        ));
    }
    Matrix { roles, rows, notes }
}
