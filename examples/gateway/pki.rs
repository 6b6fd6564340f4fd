//! A development PKI made at start-up: a private CA, the services' server
//! certificate and the gateway's client certificate. Production reads files
//! (see `tls::ReloadingCertificates`).

use std::net::IpAddr;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// PEM chain and key of one leaf.
pub struct Leaf {
    pub chain: String,
    pub key: String,
}

pub struct DevPki {
    pub ca: String,
    /// Server certificate of every service (127.0.0.1, ::1, localhost).
    pub service: Leaf,
    /// The gateway's client certificate: `spiffe://shop/gateway`.
    pub gateway: Leaf,
}

impl DevPki {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "shop dev CA");
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, sans: Vec<SanType>| -> Result<Leaf, rcgen::Error> {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names = sans;
            let key = KeyPair::generate()?;
            Ok(Leaf {
                chain: params.signed_by(&key, &issuer)?.pem(),
                key: key.serialize_pem(),
            })
        };
        let service = leaf(
            "shop services",
            vec![
                SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
                SanType::IpAddress(IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1])),
                SanType::DnsName("localhost".try_into()?),
            ],
        )?;
        let gateway = leaf(
            "gateway",
            vec![SanType::URI("spiffe://shop/gateway".try_into()?)],
        )?;
        Ok(Self {
            ca: ca_pem,
            service,
            gateway,
        })
    }
}
