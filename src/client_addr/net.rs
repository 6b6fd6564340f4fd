//! IP networks: which peers are trusted proxies.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address).
///
/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are the IPv4 address they
/// carry, both as a network and as an address tested against one, so a
/// dual-stack listener's peers match IPv4 networks.
///
/// ```
/// use tower_gateway::client_addr::IpNet;
///
/// let net: IpNet = "10.1.0.0/16".parse().unwrap();
/// assert!(net.contains("10.1.200.3".parse().unwrap()));
/// assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
/// assert!(!net.contains("10.2.0.1".parse().unwrap()));
/// assert_eq!(net.to_string(), "10.1.0.0/16");
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with a `prefix`-bit mask (`None` if the prefix
    /// is longer than the address).
    ///
    /// ```
    /// use tower_gateway::client_addr::IpNet;
    ///
    /// let net = IpNet::new("2001:db8::".parse().unwrap(), 32).unwrap();
    /// assert!(net.contains("2001:db8:1::1".parse().unwrap()));
    /// assert!(IpNet::new("192.0.2.0".parse().unwrap(), 33).is_none());
    /// ```
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let canonical_addr = canonical(addr);
        let prefix = if canonical_addr.is_ipv4() && addr.is_ipv6() {
            // `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
            prefix.saturating_sub(96)
        } else {
            prefix
        };
        Some(Self {
            addr: canonical_addr,
            prefix,
        })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = (mask128(self.prefix.saturating_add(96)) & u128::from(u32::MAX)) as u32;
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| IpNetError(s.to_owned()))?,
            None => max,
        };
        Self::new(addr, prefix).ok_or_else(|| IpNetError(s.to_owned()))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not an IP network.
///
/// ```
/// use tower_gateway::client_addr::IpNet;
///
/// let error = "nope".parse::<IpNet>().unwrap_err();
/// assert_eq!(error.to_string(), r#""nope" is not an IP network"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network")]
pub struct IpNetError(String);

/// IPv4-mapped IPv6 addresses are the IPv4 client they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The 128-bit mask with the top `bits` bits set.
pub(crate) fn mask128(bits: u8) -> u128 {
    match bits {
        0 => 0,
        b if b >= 128 => u128::MAX,
        b => u128::MAX << (128 - u32::from(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(net.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!net.contains("2001:db9::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
        let host: IpNet = "192.0.2.1".parse().unwrap();
        assert!(host.contains("192.0.2.1".parse().unwrap()));
        assert!(!host.contains("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_networks_are_ipv4() {
        let net: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.9.9.9".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
    }
}
