//! Test certificates made with rcgen: a CA that issues leaves, as PEM
//! (what files and Consul's API carry) and DER (what a handshake shows).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue leaves.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// One issued leaf.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with this common name and SANs (`spiffe://…` and other URIs
    /// become URI SANs, `127.0.0.1` an IP SAN, anything else a DNS SAN).
    pub fn leaf(&self, common_name: &str, sans: &[&str]) -> Leaf {
        self.leaf_valid(common_name, sans, None)
    }

    /// Like [`leaf`](Self::leaf), valid from now for `validity`.
    pub fn leaf_valid(
        &self,
        common_name: &str,
        sans: &[&str],
        validity: Option<std::time::Duration>,
    ) -> Leaf {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                if san.contains("://") {
                    SanType::URI((*san).try_into().unwrap())
                } else if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*san).try_into().unwrap())
                }
            })
            .collect();
        if let Some(validity) = validity {
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            // A minute of slack before, as CAs allow for clock skew.
            params.not_before = epoch + now.saturating_sub(std::time::Duration::from_secs(60));
            params.not_after = epoch + now + validity;
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
