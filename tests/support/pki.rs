//! Test PKI, generated fresh for every test with rcgen (ECDSA P-256): the server CA and
//! server certificate, the client CA listed in `client_auth.trusted_cas`, the enrollment CA,
//! a foreign CA nobody trusts, leaf certificates for accounts, and CRLs.
//!
//! Every leaf gets a random 128-bit serial whose top bit is set, so its DER encoding carries
//! a leading zero sign byte: the tests then check the "no sign byte" text form for free.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The organisation every test certificate carries, so subjects have two RDNs and the
/// RFC 4514 order (last RDN first) is visible.
pub const ORG: &str = "certgate tests";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("system random");
    b
}

/// A random positive 128-bit serial with the top bit set (DER adds a `00` sign byte).
fn random_serial() -> [u8; 16] {
    let mut s = random_bytes::<16>();
    s[0] |= 0x80;
    s
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token for the admin API (hex, 64 characters).
pub fn random_token() -> String {
    hex(&random_bytes::<32>())
}

/// Lowercase hex SHA-256 of the DER.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// RFC 3339 UTC, second precision, `Z` suffix.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Truncates to whole seconds, as X.509 validity times are encoded.
pub fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("valid nanosecond")
}

pub fn now() -> OffsetDateTime {
    whole_seconds(OffsetDateTime::now_utc())
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    pub name: String,
    params: CertificateParams,
    key: KeyPair,
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORG);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now() - time::Duration::days(1);
        params.not_after = now() + time::Duration::days(365);
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            name: common_name.to_string(),
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            params,
            key,
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// PKCS#8 PEM of the CA key (the enrollment CA's key goes into the config).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf from `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORG);
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params.subject_alt_names = spec.sans.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = spec.eku.clone();
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = whole_seconds(spec.not_before);
        params.not_after = whole_seconds(spec.not_after);
        let cert = params.signed_by(&key, &self.issuer()).expect("sign leaf");
        let der = cert.der().to_vec();
        Leaf {
            serial: hex(&serial),
            fingerprint: fingerprint(&der),
            subject: format!("CN={},O={ORG}", spec.common_name),
            not_before: params.not_before,
            not_after: params.not_after,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            der,
        }
    }

    /// A CRL signed by this CA listing `revoked` (keyCompromise), valid for a day.
    pub fn crl(&self, revoked: &[&Leaf]) -> Vec<u8> {
        let now = now();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&leaf.serial_bytes()),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()).expect("sign CRL");
        crl.pem().expect("CRL PEM").into_bytes()
    }
}

/// What to put into a leaf certificate.
#[derive(Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub sans: Vec<SanType>,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("IA5 URI"))
}

impl LeafSpec {
    /// A client certificate for `account` carried in `urn:certgate:account:<account>`,
    /// valid from an hour ago for a day.
    pub fn account(account: &str) -> LeafSpec {
        LeafSpec::bare(account).san_uri(&format!("urn:certgate:account:{account}"))
    }

    /// A client certificate with only a CN (no SANs).
    pub fn bare(common_name: &str) -> LeafSpec {
        LeafSpec {
            common_name: common_name.to_string(),
            sans: Vec::new(),
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now() - time::Duration::hours(1),
            not_after: now() + time::Duration::days(1),
        }
    }

    /// The server certificate: `localhost` and `127.0.0.1`.
    pub fn server() -> LeafSpec {
        let mut spec = LeafSpec::bare("localhost");
        spec.sans = vec![
            SanType::DnsName("localhost".try_into().expect("IA5")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        spec.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
        spec
    }

    pub fn san_uri(mut self, u: &str) -> LeafSpec {
        self.sans.push(uri(u));
        self
    }

    pub fn san_email(mut self, email: &str) -> LeafSpec {
        self.sans
            .push(SanType::Rfc822Name(email.try_into().expect("IA5 email")));
        self
    }

    /// Adds `urn:certgate:generation:<n>`.
    pub fn generation(self, n: u64) -> LeafSpec {
        self.san_uri(&format!("urn:certgate:generation:{n}"))
    }

    pub fn not_before(mut self, t: OffsetDateTime) -> LeafSpec {
        self.not_before = t;
        self
    }

    pub fn not_after(mut self, t: OffsetDateTime) -> LeafSpec {
        self.not_after = t;
        self
    }

    /// Valid from an hour ago until `secs` seconds from now.
    pub fn expiring_in(self, secs: i64) -> LeafSpec {
        self.not_after(now() + time::Duration::seconds(secs))
    }

    /// Expired an hour ago.
    pub fn expired(self) -> LeafSpec {
        self.not_before(now() - time::Duration::days(2))
            .not_after(now() - time::Duration::hours(1))
    }
}

/// An issued leaf certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    /// Lowercase hex of the serial, no sign byte (the contract's text form).
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// RFC 4514 subject, as the gateway must render it.
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn serial_bytes(&self) -> Vec<u8> {
        (0..self.serial.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&self.serial[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The serial in openssl's `AB:CD:…` form.
    pub fn serial_openssl(&self) -> String {
        self.serial_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// `X-Client-Cert-Not-After` as the contract renders it.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// RFC 9440 `Client-Cert` value.
    pub fn client_cert_header(&self) -> String {
        format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(&self.der)
        )
    }

    /// Certificate then key, PEM, as reqwest's `Identity::from_pem` wants it.
    pub fn identity_pem(&self) -> Vec<u8> {
        format!("{}{}", self.cert_pem, self.key_pem).into_bytes()
    }

    pub fn reqwest_identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(&self.identity_pem()).expect("reqwest identity")
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.der.clone())
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Time left until `notAfter` passes (zero when it already has).
    pub fn remaining(&self) -> Duration {
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(self.not_after.unix_timestamp().max(0) as u64);
        not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// All the authorities a test needs, plus the server certificate.
pub struct Pki {
    /// Signs the gateway's server certificate; clients trust it.
    pub server_ca: Ca,
    pub server: Leaf,
    /// Listed in `client_auth.trusted_cas`.
    pub client_ca: Ca,
    /// certgate's enrollment CA (`enrollment.ca_cert` / `ca_key`).
    pub enroll_ca: Ca,
    /// Trusted by nobody.
    pub foreign_ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let server_ca = Ca::new("certgate test server CA");
        let server = server_ca.issue(&LeafSpec::server());
        Pki {
            server_ca,
            server,
            client_ca: Ca::new("certgate test client CA"),
            enroll_ca: Ca::new("certgate test enrollment CA"),
            foreign_ca: Ca::new("certgate test foreign CA"),
        }
    }

    /// A client certificate for `account` from the trusted client CA.
    pub fn client(&self, account: &str) -> Leaf {
        self.client_ca.issue(&LeafSpec::account(account))
    }

    /// A certificate as certgate's enrollment would issue it: account and generation URIs.
    pub fn enrolled(&self, account: &str, generation: u64) -> Leaf {
        self.enroll_ca
            .issue(&LeafSpec::account(account).generation(generation))
    }

    /// Like [`Pki::enrolled`], expired an hour ago.
    pub fn enrolled_expired(&self, account: &str, generation: u64) -> Leaf {
        self.enroll_ca
            .issue(&LeafSpec::account(account).generation(generation).expired())
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
