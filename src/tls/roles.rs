//! Which roles a certificate identity holds, so that
//! [`RbacLayer`](crate::rbac::RbacLayer) can authorize services by the
//! certificate they present.

use crate::identity::{Identity, PeerIdentity};

/// Maps certificate identities to roles: by exact SAN (a SPIFFE ID, a DNS
/// name), by SAN prefix (a whole SPIFFE trust domain or path), or by exact
/// subject DN. The roles of every matching entry are merged, in order,
/// without duplicates.
///
/// ```
/// use tower_gateway::{identity::PeerIdentity, tls::PeerRoles};
///
/// let roles = PeerRoles::new()
///     .san("spiffe://shop/orders", ["orders"])
///     .san_prefix("spiffe://shop/", ["shop"])
///     .subject("CN=ops, O=shop", ["admin"]);
/// let peer = PeerIdentity {
///     subject: "CN=orders, O=shop".into(),
///     sans: vec!["spiffe://shop/orders".into(), "orders.internal".into()],
/// };
/// assert_eq!(roles.roles_for(&peer), ["orders", "shop"]);
///
/// let identity = roles.identity(peer.clone());
/// assert!(identity.has_role("orders"));
/// assert_eq!(identity.peer(), Some(&peer));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRoles {
    entries: Vec<(Matcher, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    San(String),
    SanPrefix(String),
    Subject(String),
}

impl Matcher {
    fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            Self::San(san) => peer.sans.iter().any(|s| s == san),
            Self::SanPrefix(prefix) => peer.sans.iter().any(|s| s.starts_with(prefix.as_str())),
            Self::Subject(subject) => peer.subject == *subject,
        }
    }
}

impl PeerRoles {
    /// No mapping: certificate identities hold no roles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants `roles` to a peer with exactly this DNS or URI SAN.
    pub fn san<I, S>(self, san: impl Into<String>, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entry(Matcher::San(san.into()), roles)
    }

    /// Grants `roles` to a peer with a DNS or URI SAN starting with
    /// `prefix` — `spiffe://shop/` for a whole SPIFFE trust domain. End a
    /// URI prefix with `/`: `spiffe://shop` would also match
    /// `spiffe://shopping/...`.
    pub fn san_prefix<I, S>(self, prefix: impl Into<String>, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entry(Matcher::SanPrefix(prefix.into()), roles)
    }

    /// Grants `roles` to a peer whose subject DN is exactly `subject`, as
    /// [`parse_peer_certificate`](super::parse_peer_certificate) renders it
    /// (`CN=ops, O=shop`, in certificate order).
    pub fn subject<I, S>(self, subject: impl Into<String>, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entry(Matcher::Subject(subject.into()), roles)
    }

    fn entry<I, S>(mut self, matcher: Matcher, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entries
            .push((matcher, roles.into_iter().map(Into::into).collect()));
        self
    }

    /// The roles `peer` holds.
    pub fn roles_for(&self, peer: &PeerIdentity) -> Vec<String> {
        let mut roles: Vec<String> = Vec::new();
        for (matcher, granted) in &self.entries {
            if matcher.matches(peer) {
                for role in granted {
                    if !roles.contains(role) {
                        roles.push(role.clone());
                    }
                }
            }
        }
        roles
    }

    /// The crate's [`Identity`] for a verified peer: [`Identity::peer`] is
    /// `peer`, [`Identity::roles`] are the mapped roles, and the subject is
    /// the peer's name (see [`Identity::from_peer_with_roles`]).
    pub fn identity(&self, peer: PeerIdentity) -> Identity {
        let roles = self.roles_for(&peer);
        Identity::from_peer_with_roles(peer, roles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subject: &str, sans: &[&str]) -> PeerIdentity {
        PeerIdentity {
            subject: subject.into(),
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn entries_merge_in_order_without_duplicates() {
        let roles = PeerRoles::new()
            .san("spiffe://shop/orders", ["orders", "reader"])
            .san_prefix("spiffe://shop/", ["reader", "shop"])
            .subject("CN=x", ["x"]);
        assert_eq!(
            roles.roles_for(&peer("CN=y", &["spiffe://shop/orders"])),
            ["orders", "reader", "shop"]
        );
        assert!(
            roles
                .roles_for(&peer("CN=y", &["spiffe://shopping/orders"]))
                .is_empty()
        );
        assert_eq!(roles.roles_for(&peer("CN=x", &[])), ["x"]);
    }

    #[test]
    fn identity_without_roles_is_a_bare_peer() {
        let id = PeerRoles::new().identity(peer("CN=a", &["a.internal"]));
        assert!(id.roles().is_empty());
        assert!(id.claims().is_empty());
        assert_eq!(id.peer().map(|p| p.subject.as_str()), Some("CN=a"));
        // The subject names the peer: its DNS SAN here.
        assert_eq!(id.subject(), Some("a.internal"));
        let spiffe = PeerRoles::new().identity(peer("CN=b", &["b.internal", "spiffe://shop/b"]));
        assert_eq!(spiffe.subject(), Some("spiffe://shop/b"));
        assert_eq!(
            PeerRoles::new().identity(peer("CN=c", &[])).subject(),
            Some("CN=c")
        );
    }
}
