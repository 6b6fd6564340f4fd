//! Test certificates made with rcgen: a CA that issues leaves, as PEM
//! (what files and Consul's API carry) and DER (what a handshake shows).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue leaves.
pub struct TestCa {
    pub pem: String,
    params: CertificateParams,
    key_pem: String,
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
        Self::with_uri(name, None)
    }

    /// A CA whose certificate carries `uri` as a URI SAN (Consul Connect
    /// roots carry `spiffe://<trust-domain>`).
    pub fn with_uri(name: &str, uri: Option<&str>) -> Self {
        let mut params = CertificateParams::default();
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
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
            key_pem: key.serialize_pem(),
            params: params.clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// This CA's certificate signed by `other` (same subject and key): an
    /// intermediate through which peers that trust only `other` accept
    /// this CA's leaves, as Consul's CA rotation provides.
    pub fn cross_signed_by(&self, other: &TestCa) -> String {
        let key = KeyPair::from_pem(&self.key_pem).unwrap();
        self.params.signed_by(&key, &other.issuer).unwrap().pem()
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
        self.leaf_with(common_name, sans, validity, None)
    }

    /// Like [`leaf_valid`](Self::leaf_valid), with this serial number.
    pub fn leaf_with(
        &self,
        common_name: &str,
        sans: &[&str],
        validity: Option<std::time::Duration>,
        serial: Option<u64>,
    ) -> Leaf {
        let mut params = CertificateParams::default();
        params.serial_number = serial.map(rcgen::SerialNumber::from);
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
