use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicU64, Ordering},
};

use http::Method;

use crate::path::{NormalizedPath, normalize};

/// What a rule demands of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// Anyone, with or without an identity.
    Public,
    /// Any verified identity.
    Authenticated,
    /// At least one of these roles (after the role hierarchy is applied).
    AnyOf(Vec<String>),
    /// Every one of these roles (after the role hierarchy is applied).
    AllOf(Vec<String>),
}

/// A path pattern matched on whole segments.
///
/// `/orders` matches `/orders`, `/orders/` and `/orders/7` — never
/// `/ordersX`. A `{name}` segment matches any one segment:
/// `/orders/{id}/items` matches `/orders/7/items/3`. An exact pattern
/// ([`Rule::exact`]) matches only paths with as many segments as it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
    prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

impl PathPattern {
    fn parse(pattern: &str, prefix: bool) -> Result<Self, PolicyError> {
        let invalid = || PolicyError::InvalidPattern(pattern.to_owned());
        // Patterns go through the same normalization as requests, so a
        // pattern can never be spelled in a way no normalized path matches.
        let placeholder = pattern.replace(['{', '}'], "");
        let normalized = normalize(&placeholder).map_err(|_| invalid())?;
        if normalized.as_str().trim_end_matches('/') != placeholder.trim_end_matches('/') {
            return Err(invalid());
        }
        let mut segments = Vec::new();
        for raw in pattern.split('/').filter(|s| !s.is_empty()) {
            if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(invalid());
                }
                segments.push(Segment::Param);
            } else if raw.contains(['{', '}']) {
                return Err(invalid());
            } else {
                segments.push(Segment::Literal(raw.to_owned()));
            }
        }
        Ok(Self { segments, prefix })
    }

    fn matches(&self, path: &NormalizedPath, case_insensitive: bool) -> bool {
        let mut path_segments = path.segments();
        for pattern_segment in &self.segments {
            let Some(segment) = path_segments.next() else {
                return false;
            };
            if let Segment::Literal(literal) = pattern_segment {
                let same = if case_insensitive {
                    literal.eq_ignore_ascii_case(segment)
                } else {
                    literal == segment
                };
                if !same {
                    return false;
                }
            }
        }
        self.prefix || path_segments.next().is_none()
    }
}

/// One RBAC rule: methods and a path pattern, and what they require.
///
/// ```
/// use http::Method;
/// use tower_gateway::rbac::Rule;
///
/// let rule = Rule::new("/orders").methods([Method::POST]).any_of(["user"]);
/// let admin_only = Rule::new("/orders").methods([Method::GET]).any_of(["admin"]);
/// let health = Rule::exact("/health").public();
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    name: Option<String>,
    pattern_text: String,
    prefix: bool,
    methods: Vec<Method>,
    requirement: Requirement,
}

impl Rule {
    /// A rule for `pattern` and every path below it, any method, requiring
    /// an authenticated caller until a requirement is set.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            name: None,
            pattern_text: pattern.into(),
            prefix: true,
            methods: Vec::new(),
            requirement: Requirement::Authenticated,
        }
    }

    /// A rule for exactly `pattern` (no deeper paths).
    pub fn exact(pattern: impl Into<String>) -> Self {
        Self {
            prefix: false,
            ..Self::new(pattern)
        }
    }

    /// Names the rule in logs and shadow counters (default: methods and
    /// pattern).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Restricts the rule to these methods (default: every method). A rule
    /// for `GET` also covers `HEAD`, which routers answer with the `GET`
    /// handler, and methods match in any ASCII case (`get` meets the `GET`
    /// rules), as frameworks that upper-case the method would route it.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Requires at least one of `roles`.
    pub fn any_of<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requirement = Requirement::AnyOf(roles.into_iter().map(Into::into).collect());
        self
    }

    /// Requires every one of `roles`.
    pub fn all_of<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requirement = Requirement::AllOf(roles.into_iter().map(Into::into).collect());
        self
    }

    /// Requires any verified identity.
    pub fn authenticated(mut self) -> Self {
        self.requirement = Requirement::Authenticated;
        self
    }

    /// Lets everyone through.
    pub fn public(mut self) -> Self {
        self.requirement = Requirement::Public;
        self
    }

    /// Sets the requirement.
    pub(crate) fn requirement(mut self, requirement: Requirement) -> Self {
        self.requirement = requirement;
        self
    }

    fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let methods = if self.methods.is_empty() {
            "*".to_owned()
        } else {
            self.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{methods} {}", self.pattern_text)
    }
}

/// Roles that imply other roles: `admin` implies `user`, so an admin passes
/// every rule that asks for `user`. Transitive; cycles are harmless.
///
/// ```
/// use tower_gateway::rbac::RoleHierarchy;
///
/// let h = RoleHierarchy::new().inherit("admin", ["user"]).inherit("user", ["viewer"]);
/// assert!(h.implies("admin", "viewer"));
/// assert!(!h.implies("viewer", "user"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RoleHierarchy {
    direct: HashMap<String, Vec<String>>,
    closure: HashMap<String, HashSet<String>>,
}

impl RoleHierarchy {
    /// An empty hierarchy: every role implies only itself.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that `role` implies each of `implied`.
    pub fn inherit<I, S>(mut self, role: impl Into<String>, implied: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.direct
            .entry(role.into())
            .or_default()
            .extend(implied.into_iter().map(Into::into));
        self.rebuild();
        self
    }

    /// Whether holding `held` grants `wanted`.
    pub fn implies(&self, held: &str, wanted: &str) -> bool {
        held == wanted
            || self
                .closure
                .get(held)
                .is_some_and(|implied| implied.contains(wanted))
    }

    /// Precomputes the transitive closure so a decision is a set lookup.
    fn rebuild(&mut self) {
        let mut closure = HashMap::with_capacity(self.direct.len());
        for role in self.direct.keys() {
            let mut seen: HashSet<String> = HashSet::new();
            let mut stack: Vec<&str> = vec![role];
            while let Some(current) = stack.pop() {
                for next in self.direct.get(current).into_iter().flatten() {
                    if seen.insert(next.clone()) {
                        stack.push(next);
                    }
                }
            }
            closure.insert(role.clone(), seen);
        }
        self.closure = closure;
    }

    fn grants(&self, held: &[impl AsRef<str>], wanted: &str) -> bool {
        held.iter().any(|h| self.implies(h.as_ref(), wanted))
    }
}

/// An invalid policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A path pattern that is not a normalized absolute path with whole
    /// `{param}` segments.
    #[error("invalid path pattern {0:?}")]
    InvalidPattern(String),
    /// A role requirement with no roles, which could never be met.
    #[error("rule {0:?} requires an empty set of roles")]
    EmptyRoles(String),
}

/// An ordered table of rules; the first rule whose methods and pattern match
/// decides. Requests no rule matches are allowed, or denied with
/// [`PolicyBuilder::deny_unmatched`].
///
/// ```
/// use http::Method;
/// use tower_gateway::rbac::{Policy, Rule};
///
/// let policy = Policy::builder()
///     .rule(Rule::exact("/health").public())
///     .rule(Rule::new("/orders").methods([Method::GET]).any_of(["admin"]))
///     .rule(Rule::new("/orders").methods([Method::POST]).any_of(["user", "admin"]))
///     .deny_unmatched(true)
///     .build()
///     .unwrap();
/// ```
#[derive(Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    deny_unmatched: bool,
    case_insensitive: bool,
    unmatched_denials: AtomicU64,
}

#[derive(Debug)]
struct CompiledRule {
    label: String,
    methods: Vec<Method>,
    pattern: PathPattern,
    requirement: Requirement,
    denials: AtomicU64,
}

/// Builds a [`Policy`].
#[derive(Debug, Clone, Default)]
pub struct PolicyBuilder {
    rules: Vec<Rule>,
    deny_unmatched: bool,
    case_insensitive: bool,
}

impl PolicyBuilder {
    /// Appends a rule; earlier rules take precedence.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Denies requests that no rule matches (default: allow them).
    pub fn deny_unmatched(mut self, deny: bool) -> Self {
        self.deny_unmatched = deny;
        self
    }

    /// Matches literal segments without regard to ASCII case — for
    /// upstreams that route case-insensitively (Express does by default),
    /// where `/ORDERS` must meet the rules of `/orders`.
    pub fn case_insensitive(mut self, yes: bool) -> Self {
        self.case_insensitive = yes;
        self
    }

    /// Checks every rule and builds the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for rule in self.rules {
            let label = rule.label();
            if let Requirement::AnyOf(roles) | Requirement::AllOf(roles) = &rule.requirement
                && roles.is_empty()
            {
                return Err(PolicyError::EmptyRoles(label));
            }
            rules.push(CompiledRule {
                pattern: PathPattern::parse(&rule.pattern_text, rule.prefix)?,
                label,
                methods: rule.methods,
                requirement: rule.requirement,
                denials: AtomicU64::new(0),
            });
        }
        Ok(Policy {
            rules,
            deny_unmatched: self.deny_unmatched,
            case_insensitive: self.case_insensitive,
            unmatched_denials: AtomicU64::new(0),
        })
    }
}

/// The outcome of evaluating a [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// The request needs an identity and has none (401).
    Unauthenticated,
    /// The identity lacks the required roles (403).
    Forbidden,
}

/// Which rule decided, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    Rule(usize),
    Unmatched,
}

impl Policy {
    /// Starts a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A policy of one rule covering every path and method, for per-route
    /// use. An empty role set is kept as is: it denies every caller.
    pub(crate) fn single(rule: Rule) -> Self {
        Self {
            rules: vec![CompiledRule {
                label: rule.label(),
                methods: rule.methods,
                pattern: PathPattern {
                    segments: Vec::new(),
                    prefix: true,
                },
                requirement: rule.requirement,
                denials: AtomicU64::new(0),
            }],
            deny_unmatched: true,
            case_insensitive: false,
            unmatched_denials: AtomicU64::new(0),
        }
    }

    /// A policy with no rules that allows every request.
    pub(crate) fn empty() -> Self {
        Self {
            rules: Vec::new(),
            deny_unmatched: false,
            case_insensitive: false,
            unmatched_denials: AtomicU64::new(0),
        }
    }

    /// The policy of a route's role rules: each rule covers every path (the
    /// route matched it already), methods no rule names are denied, and an
    /// empty role set denies everyone.
    pub(crate) fn for_route(rules: &[Rule]) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|rule| CompiledRule {
                    label: rule.label(),
                    methods: rule.methods.clone(),
                    pattern: PathPattern {
                        segments: Vec::new(),
                        prefix: true,
                    },
                    requirement: rule.requirement.clone(),
                    denials: AtomicU64::new(0),
                })
                .collect(),
            deny_unmatched: true,
            case_insensitive: false,
            unmatched_denials: AtomicU64::new(0),
        }
    }

    /// Decides for a request. `roles` is `None` when the request carries no
    /// identity.
    pub fn decide(
        &self,
        method: &Method,
        path: &NormalizedPath,
        roles: Option<&[String]>,
        hierarchy: &RoleHierarchy,
    ) -> Decision {
        self.evaluate(method, path, roles, hierarchy).0
    }

    pub(crate) fn evaluate(
        &self,
        method: &Method,
        path: &NormalizedPath,
        roles: Option<&[String]>,
        hierarchy: &RoleHierarchy,
    ) -> (Decision, Matched) {
        // Methods are case-sensitive on the wire, but Django and
        // Werkzeug/Flask upper-case them: `get` (an extension method to
        // hyper) must meet the GET rules, or it falls through to
        // "unmatched" and runs a guarded GET handler for anyone.
        let same = |a: &Method, b: &Method| a.as_str().eq_ignore_ascii_case(b.as_str());
        let is_head = same(method, &Method::HEAD);
        let Some((index, rule)) = self.rules.iter().enumerate().find(|(_, rule)| {
            (rule.methods.is_empty()
                || rule.methods.iter().any(|m| same(m, method))
                // HEAD is GET without the body (RFC 9110 §9.3.2), and axum,
                // hyper routers and Express answer it with the GET handler:
                // a GET rule must guard HEAD too, or HEAD runs an admin-only
                // handler for anyone.
                || (is_head && rule.methods.contains(&Method::GET)))
                && rule.pattern.matches(path, self.case_insensitive)
        }) else {
            let decision = match (self.deny_unmatched, roles) {
                (false, _) => Decision::Allow,
                (true, None) => Decision::Unauthenticated,
                (true, Some(_)) => Decision::Forbidden,
            };
            return (decision, Matched::Unmatched);
        };
        let decision = match (&rule.requirement, roles) {
            (Requirement::Public, _) => Decision::Allow,
            (_, None) => Decision::Unauthenticated,
            (Requirement::Authenticated, Some(_)) => Decision::Allow,
            (Requirement::AnyOf(wanted), Some(held)) => {
                if wanted.iter().any(|w| hierarchy.grants(held, w)) {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                }
            }
            (Requirement::AllOf(wanted), Some(held)) => {
                if wanted.iter().all(|w| hierarchy.grants(held, w)) {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                }
            }
        };
        (decision, Matched::Rule(index))
    }

    /// Counts a denial against the rule that decided.
    pub(crate) fn count_denial(&self, matched: Matched) {
        let counter = match matched {
            Matched::Rule(i) => &self.rules[i].denials,
            Matched::Unmatched => &self.unmatched_denials,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The label of the rule that decided (`"<unmatched>"` for none).
    pub(crate) fn label(&self, matched: Matched) -> &str {
        match matched {
            Matched::Rule(i) => &self.rules[i].label,
            Matched::Unmatched => "<unmatched>",
        }
    }

    /// The label of every rule in order, then `"<unmatched>"`: the rules
    /// [`Matched`] indexes.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn labels(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|r| r.label.as_str())
            .chain(["<unmatched>"])
    }

    /// Denials counted per rule label since start, unmatched requests under
    /// `"<unmatched>"`. In shadow mode these are the requests the policy
    /// *would* have denied.
    pub fn denials(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .rules
            .iter()
            .map(|r| (r.label.clone(), r.denials.load(Ordering::Relaxed)))
            .collect();
        out.push((
            "<unmatched>".to_owned(),
            self.unmatched_denials.load(Ordering::Relaxed),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NormalizedPath {
        normalize(s).unwrap()
    }

    #[test]
    fn patterns_match_whole_segments() {
        let pat = PathPattern::parse("/orders", true).unwrap();
        assert!(pat.matches(&p("/orders"), false));
        assert!(pat.matches(&p("/orders/"), false));
        assert!(pat.matches(&p("/orders/7"), false));
        assert!(!pat.matches(&p("/ordersX"), false));
        assert!(!pat.matches(&p("/order"), false));
        assert!(!pat.matches(&p("/"), false));
        assert!(!pat.matches(&p("/ORDERS"), false));
        assert!(pat.matches(&p("/ORDERS"), true));
        let exact = PathPattern::parse("/orders/{id}", false).unwrap();
        assert!(exact.matches(&p("/orders/7"), false));
        assert!(!exact.matches(&p("/orders"), false));
        assert!(!exact.matches(&p("/orders/7/items"), false));
        let root = PathPattern::parse("/", true).unwrap();
        assert!(root.matches(&p("/anything/at/all"), false));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "orders",
            "/orders/../x",
            "/a//b",
            "/{",
            "/{}",
            "/a{b}",
            "/%2e%2e",
            "/a;b",
        ] {
            assert!(PathPattern::parse(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn hierarchy_is_transitive_and_cycle_safe() {
        let h = RoleHierarchy::new()
            .inherit("admin", ["user"])
            .inherit("user", ["viewer"])
            .inherit("viewer", ["admin-lite"])
            .inherit("admin-lite", ["admin"]);
        assert!(h.implies("admin", "viewer"));
        assert!(h.implies("viewer", "admin"));
        assert!(!h.implies("guest", "viewer"));
    }

    #[test]
    fn empty_role_set_is_an_error() {
        let err = Policy::builder()
            .rule(Rule::new("/x").any_of(Vec::<String>::new()))
            .build()
            .unwrap_err();
        assert!(matches!(err, PolicyError::EmptyRoles(_)));
    }
}
