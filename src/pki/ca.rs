//! Certificate issuing: the enrollment CA (load, issue client certificates, check CSRs,
//! sign the CRL) and the development PKI that `certgate init` and `certgate demo` write.
//! Private keys never appear in `Debug` output and are written with mode 0600; a CA key
//! file that other users can read is refused.
//!
//! Neighbours: `config` validated the CA files; `identity` defines the SAN URIs read back
//! from issued certificates; `enroll` serves what this module makes; `p12` packs a key and
//! its chain for browsers; `app`/`cli` call this for `init` and `demo`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer as _;

use crate::core::identity::{GENERATION_URI_PREFIX, RENEWS_URI_PREFIX};
use crate::core::text::{self, pem_encode};

/// SAN URI prefix naming the account in issued certificates.
pub const ACCOUNT_URI_PREFIX: &str = "urn:certgate:account:";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("account id {0:?} is not valid ([A-Za-z0-9._@+-], 1 to 128 characters)")]
    BadAccount(String),
    #[error("random number generator failed")]
    Rng,
    #[error(
        "{path} is readable by other users (mode {mode:04o}); the CA key must be private: \
         run `chmod 600 {path}` (or 640 with a dedicated group)",
        path = .path.display()
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },
}

/// Why a certificate signing request was refused. The texts are sent to the client: they
/// say what is wrong and what is accepted, never more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the body is not a PKCS#10 certificate signing request (PEM or DER): {0}")]
    Malformed(String),
    #[error(
        "unsupported key type {0}; accepted: ECDSA P-256 or P-384, Ed25519, RSA 2048 to 8192 bits"
    )]
    UnsupportedKey(String),
    #[error("RSA key of {0} bits is too weak; use at least {MIN_RSA_BITS} bits")]
    WeakRsa(usize),
    #[error("RSA key of {0} bits is larger than the {MAX_RSA_BITS} bits accepted")]
    HugeRsa(usize),
    #[error("the signature of the certificate signing request does not verify")]
    BadSignature,
}

/// Smallest RSA modulus accepted in a CSR.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted in a CSR (bounds the cost of checking its signature).
pub const MAX_RSA_BITS: usize = 8192;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// Checks a PKCS#10 request (DER) and returns its public key: only the key is used, the
/// subject, extensions and everything else the request asks for are ignored. The key type
/// is checked first (so an RSA-1024 request gets a clear answer), then the signature
/// (proof that the requester holds the private key).
pub fn csr_public_key(der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CsrError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::public_key::PublicKey;

    let (rest, req) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let spki = &req.certification_request_info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                OID_P256 | OID_P384 => {}
                "" => return Err(CsrError::UnsupportedKey("EC without a named curve".into())),
                other => return Err(CsrError::UnsupportedKey(format!("EC curve {other}"))),
            }
        }
        OID_ED25519 => {}
        OID_RSA => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(r)) => r.key_size(),
                _ => return Err(CsrError::Malformed("unreadable RSA public key".into())),
            };
            if bits < MIN_RSA_BITS {
                return Err(CsrError::WeakRsa(bits));
            }
            if bits > MAX_RSA_BITS {
                return Err(CsrError::HugeRsa(bits));
            }
        }
        other => return Err(CsrError::UnsupportedKey(other.to_string())),
    }
    req.verify_signature().map_err(|_| CsrError::BadSignature)?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::UnsupportedKey(format!("({e})")))
}

/// Refuses a private key file that users other than its owner and group can read (mode
/// `o+r`, or `o+w`). Group read is allowed: Kubernetes secrets mounted with an `fsGroup`
/// are 0440. Follows symlinks (a mounted secret is a symlink to the real file).
pub fn check_key_file_private(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|source| CaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o006 != 0 {
            return Err(CaError::KeyReadableByOthers {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// One entry of the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Big-endian serial bytes (no sign byte needed).
    pub serial: Vec<u8>,
    pub revoked_at: i64,
    /// `None` for `unspecified` (RFC 5280: the reason code should then be absent).
    pub reason: Option<rcgen::RevocationReason>,
}

/// The loaded enrollment CA. `Debug` hides the key.
pub struct CaIssuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// DER of the CA certificate (appended to issued chains).
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
}

impl std::fmt::Debug for CaIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaIssuer { key: ... }")
    }
}

/// A freshly issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// Lowercase hex serial.
    pub serial: String,
    pub fingerprint: String,
    pub not_after: i64,
    pub issued_at: i64,
}

impl CaIssuer {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.as_ref().to_vec())
            .map_err(|_| CaError::Rcgen(rcgen::Error::CouldNotParseCertificate))?;
        Ok(CaIssuer {
            issuer,
            cert_der: der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// Loads the CA from its certificate and key as the configuration holds them. The key
    /// file must not be readable by others ([`check_key_file_private`]).
    pub fn from_der(
        cert: &CertificateDer<'_>,
        key: &PrivateKeyDer<'_>,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        check_key_file_private(key_path)?;
        let key = KeyPair::try_from(key)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(cert, key)?;
        let der = cert.as_ref().to_vec();
        Ok(CaIssuer {
            cert_pem: pem_encode("CERTIFICATE", &der),
            cert_der: der,
            issuer,
        })
    }

    /// The DER CRL of `entries`, numbered `number`, valid from `this_update` to
    /// `next_update` (unix seconds), with an authority key identifier.
    pub fn crl(
        &self,
        number: u64,
        entries: &[CrlEntry],
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, CaError> {
        let at = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .map_err(|_| CaError::Rcgen(rcgen::Error::InvalidCrlNextUpdate))
        };
        let mut revoked_certs = Vec::with_capacity(entries.len());
        for e in entries {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&e.serial),
                revocation_time: at(e.revoked_at)?,
                reason_code: e.reason,
                invalidity_date: None,
            });
        }
        let crl = CertificateRevocationListParams {
            this_update: at(this_update)?,
            next_update: at(next_update)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        Ok(crl.der().to_vec())
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// Issues a client certificate for `account` at `generation` over `public_key`: 128-bit
    /// random serial, `clientAuth` EKU, CN = account, SAN URIs for account and generation,
    /// authority key identifier, valid from 5 minutes ago (clock skew) for `validity`.
    pub fn issue_client(
        &self,
        public_key: &impl PublicKeyData,
        account: &str,
        generation: u64,
        validity: Duration,
    ) -> Result<Issued, CaError> {
        self.issue(public_key, account, generation, validity, None)
    }

    /// [`CaIssuer::issue_client`] for a renewal of the certificate with serial `renews`
    /// (lowercase hex): the new certificate names it (`urn:certgate:renews:<serial>`), so
    /// its first use can retire the old one.
    pub fn issue_renewal(
        &self,
        public_key: &impl PublicKeyData,
        account: &str,
        generation: u64,
        validity: Duration,
        renews: &str,
    ) -> Result<Issued, CaError> {
        if renews.is_empty() || !renews.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CaError::BadAccount(format!("renewed serial {renews:?}")));
        }
        self.issue(public_key, account, generation, validity, Some(renews))
    }

    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        account: &str,
        generation: u64,
        validity: Duration,
        renews: Option<&str>,
    ) -> Result<Issued, CaError> {
        if !text::is_valid_account(account) {
            return Err(CaError::BadAccount(account.to_string()));
        }
        let now = time::OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, account);
        p.distinguished_name = dn;
        p.serial_number = Some(random_serial()?);
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.subject_alt_names = vec![
            SanType::URI(format!("{ACCOUNT_URI_PREFIX}{account}").try_into()?),
            SanType::URI(format!("{GENERATION_URI_PREFIX}{generation}").try_into()?),
        ];
        if let Some(old) = renews {
            p.subject_alt_names.push(SanType::URI(
                format!("{RENEWS_URI_PREFIX}{old}").try_into()?,
            ));
        }
        let cert = p.signed_by(public_key, &self.issuer)?;
        let der = cert.der().to_vec();
        let serial = p
            .serial_number
            .as_ref()
            .map(|s| text::serial_hex(s.as_ref()))
            .unwrap_or_default();
        Ok(Issued {
            cert_pem: cert.pem(),
            fingerprint: text::hex(&Sha256::digest(&der)),
            cert_der: der,
            serial,
            not_after: p.not_after.unix_timestamp(),
            issued_at: now.unix_timestamp(),
        })
    }
}

/// 16 random bytes with the top bit cleared (a positive INTEGER of at most 16 bytes).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Rng)?;
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 0x01;
    }
    Ok(SerialNumber::from_slice(&b))
}

/// A new ECDSA P-256 key pair.
pub fn new_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn ca_params(cn: &str, years: i64) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certgate development");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(365 * years);
    p
}

/// Files of the development PKI, relative to the init folder.
pub const DEV_FILES: [&str; 7] = [
    "certs/server-ca.pem",
    "certs/server.pem",
    "certs/server.key",
    "certs/enroll-ca.pem",
    "certs/enroll-ca.key",
    "secrets/admin-token",
    "secrets/assertion-key.pem",
];

/// The common name of the server CA `write_dev_pki` makes.
pub const DEV_SERVER_CA_NAME: &str = "certgate development server CA";

/// What `write_dev_pki` wrote.
#[derive(Debug)]
pub struct DevPki {
    pub written: Vec<PathBuf>,
}

/// Writes a development PKI under `dir`: a server CA and a server certificate for
/// `localhost`/`127.0.0.1`/`::1`, the enrollment CA, and a random admin token. Private keys
/// and the token are written 0600. Refuses to overwrite any existing file unless `force`.
pub fn write_dev_pki(dir: &Path, force: bool) -> Result<DevPki, CaError> {
    if !force {
        for f in DEV_FILES {
            let p = dir.join(f);
            if p.exists() {
                return Err(CaError::Exists(p));
            }
        }
    }
    let server_ca_key = new_key()?;
    let server_ca_params = ca_params(DEV_SERVER_CA_NAME, 10);
    let server_ca = server_ca_params.self_signed(&server_ca_key)?;
    let server_issuer = rcgen::Issuer::new(server_ca_params, server_ca_key);

    let server_key = new_key()?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string()])?;
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("literal")));
    sp.subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("literal")));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    sp.distinguished_name = dn;
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    sp.not_before = now - time::Duration::minutes(5);
    sp.not_after = now + time::Duration::days(397);
    let server = sp.signed_by(&server_key, &server_issuer)?;

    let enroll_key = new_key()?;
    let enroll_ca = ca_params("certgate development enrollment CA", 10).self_signed(&enroll_key)?;

    let mut token = [0u8; 32];
    aws_lc_rs::rand::fill(&mut token).map_err(|_| CaError::Rng)?;
    let token = text::hex(&token);

    let mut written = Vec::new();
    let mut put = |rel: &str, content: &str, secret: bool| -> Result<(), CaError> {
        let p = dir.join(rel);
        write_file(&p, content.as_bytes(), secret)?;
        written.push(p);
        Ok(())
    };
    put("certs/server-ca.pem", &server_ca.pem(), false)?;
    put("certs/server.pem", &server.pem(), false)?;
    put("certs/server.key", &server_key.serialize_pem(), true)?;
    put("certs/enroll-ca.pem", &enroll_ca.pem(), false)?;
    put("certs/enroll-ca.key", &enroll_key.serialize_pem(), true)?;
    put("secrets/admin-token", &format!("{token}\n"), true)?;
    let assertion_key = crate::pki::assertion::generate_key_pem().map_err(|e| CaError::Io {
        path: dir.join("secrets/assertion-key.pem"),
        source: std::io::Error::other(e.to_string()),
    })?;
    put("secrets/assertion-key.pem", &assertion_key, true)?;
    Ok(DevPki { written })
}

/// Writes `content` to `path` (creating parent folders), mode 0600 when `secret`. The file
/// is created with its final mode, so a secret is never readable by others, even briefly.
pub fn write_file(path: &Path, content: &[u8], secret: bool) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(if secret { 0o600 } else { 0o644 });
        let mut f = opts.open(path).map_err(io)?;
        // An existing file keeps its old mode on open: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }))
        .map_err(io)?;
        f.write_all(content).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(content).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::AccountSource;
    use crate::tls::identity::IdentityOptions;

    #[test]
    fn issued_certificate_carries_account_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), false).unwrap();
        let ca = CaIssuer::from_files(
            &dir.path().join("certs/enroll-ca.pem"),
            &dir.path().join("certs/enroll-ca.key"),
        )
        .unwrap();
        let key = new_key().unwrap();
        let issued = ca
            .issue_client(&key, "alice", 3, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(issued.serial.len(), 32, "128-bit serial: {}", issued.serial);
        let opts = IdentityOptions {
            account_from: vec![AccountSource::SanUri],
            uri_prefix: ACCOUNT_URI_PREFIX.into(),
            enrollment_ca: Some(ca.cert_der.clone()),
        };
        let id = crate::tls::identity::parse(&issued.cert_der, &opts).unwrap();
        assert_eq!(id.account.as_deref(), Some("alice"));
        assert_eq!(id.generation, Some(3));
        assert!(id.issued_by_enrollment_ca);
        assert_eq!(id.serial, issued.serial);
        assert_eq!(id.fingerprint, issued.fingerprint);
        assert_eq!(id.subject, "CN=alice");

        // The same certificate judged against another CA: no generation credit.
        let other = IdentityOptions {
            enrollment_ca: None,
            ..opts
        };
        let id = crate::tls::identity::parse(&issued.cert_der, &other).unwrap();
        assert_eq!(id.generation, None);
        assert!(!id.issued_by_enrollment_ca);
    }

    #[test]
    fn dev_pki_refuses_to_overwrite_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), false).unwrap();
        let err = write_dev_pki(dir.path(), false).unwrap_err();
        assert!(matches!(err, CaError::Exists(_)), "{err}");
        write_dev_pki(dir.path(), true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                "certs/server.key",
                "certs/enroll-ca.key",
                "secrets/admin-token",
            ] {
                let mode = fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn bad_account_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path(), false).unwrap();
        let ca = CaIssuer::from_files(
            &dir.path().join("certs/enroll-ca.pem"),
            &dir.path().join("certs/enroll-ca.key"),
        )
        .unwrap();
        let key = new_key().unwrap();
        assert!(matches!(
            ca.issue_client(&key, "a/b", 1, Duration::from_secs(60)),
            Err(CaError::BadAccount(_))
        ));
    }
}
