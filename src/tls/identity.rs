//! The client identity: parsed once per connection from the verified leaf certificate and
//! carried to every request of that connection as an `Arc<ClientIdentity>` in the request
//! extensions. Pure functions, no I/O.
//!
//! The header values the proxy adds are rendered here, once, so the per-request path only
//! clones `HeaderValue`s (a reference-count increment).

use std::fmt::Write as _;

use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::config::AccountSource;

/// SAN URI that carries the certificate's generation (only on enrollment-CA certificates).
pub const GENERATION_URI_PREFIX: &str = "urn:certgate:generation:";

/// How to read the account out of a certificate.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub account_from: Vec<AccountSource>,
    pub uri_prefix: String,
    /// DER of the enrollment CA certificate, when enrollment is on. A generation SAN counts
    /// only on certificates this CA signed.
    pub enrollment_ca: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("client certificate is not valid DER X.509: {0}")]
    BadEncoding(String),
}

/// Everything certgate knows about the client of one connection.
#[derive(Clone)]
pub struct ClientIdentity {
    /// `None` when no `identity.account_from` source matched (or the value is not a valid
    /// account id); such a certificate has no account state to check but is still subject
    /// to revocation.
    pub account: Option<String>,
    /// Lowercase hex of the serial's bytes, no leading sign byte.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// RFC 4514 subject.
    pub subject: String,
    /// Raw DER of the issuer name (for matching configured CRLs).
    pub issuer_raw: Vec<u8>,
    pub san_uris: Vec<String>,
    pub san_emails: Vec<String>,
    pub san_dns: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `urn:certgate:generation:<n>`, only when the certificate was issued by the
    /// enrollment CA.
    pub generation: Option<u64>,
    pub issued_by_enrollment_ca: bool,
    /// Pre-rendered identity header values.
    pub headers: IdentityHeaders,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("account", &self.account)
            .field("serial", &self.serial)
            .field("fingerprint", &self.fingerprint)
            .field("subject", &self.subject)
            .field("generation", &self.generation)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Header values for the forwarded request; see DESIGN.md "Forwarding".
#[derive(Clone, Debug)]
pub struct IdentityHeaders {
    pub account: Option<HeaderValue>,
    pub serial: HeaderValue,
    pub fingerprint: HeaderValue,
    pub subject: HeaderValue,
    pub not_after: HeaderValue,
    /// RFC 9440 `Client-Cert`: `:base64(DER):`.
    pub client_cert: HeaderValue,
    /// Envoy-style `X-Forwarded-Client-Cert`.
    pub xfcc: HeaderValue,
}

/// `[A-Za-z0-9._@+-]{1,128}`.
pub fn is_valid_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
}

/// Lowercase hex of a serial's big-endian bytes without a leading sign (zero) byte.
pub fn serial_hex(raw: &[u8]) -> String {
    let mut raw = raw;
    while raw.len() > 1 && raw[0] == 0 {
        raw = &raw[1..];
    }
    hex(raw)
}

/// Normalises a serial typed by a person: accepts `abcd`, `AB:CD`, `0xab cd`, with or
/// without a leading `00` sign byte. Returns `None` for anything that is not hex.
pub fn normalize_serial(input: &str) -> Option<String> {
    let s = input.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 128 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut d = digits.to_ascii_lowercase();
    if d.len() % 2 == 1 {
        d.insert(0, '0');
    }
    // Strip leading zero bytes, keep at least one byte.
    while d.len() > 2 && d.starts_with("00") {
        d.drain(..2);
    }
    Some(d)
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// RFC 3339 UTC with second precision, e.g. `2026-11-25T10:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    match ::time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            let (h, mi, s) = (t.hour(), t.minute(), t.second());
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        }
        Err(_) => unix.to_string(),
    }
}

/// Parses a verified leaf certificate. `der` must be the leaf the handshake verified.
pub fn parse(der: &[u8], opts: &IdentityOptions) -> Result<ClientIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadEncoding(e.to_string()))?;
    let serial = serial_hex(cert.raw_serial());
    let fingerprint = hex(&Sha256::digest(der));
    let subject = rfc4514(cert.subject());

    let mut san_uris = Vec::new();
    let mut san_emails = Vec::new();
    let mut san_dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => san_uris.push((*u).to_string()),
                GeneralName::RFC822Name(e) => san_emails.push((*e).to_string()),
                GeneralName::DNSName(d) => san_dns.push((*d).to_string()),
                _ => {}
            }
        }
    }

    let issued_by_enrollment_ca = match &opts.enrollment_ca {
        Some(ca_der) => signed_by(&cert, ca_der),
        None => false,
    };
    let generation = if issued_by_enrollment_ca {
        san_uris
            .iter()
            .find_map(|u| u.strip_prefix(GENERATION_URI_PREFIX))
            .and_then(|g| g.parse::<u64>().ok())
    } else {
        None
    };

    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let account = opts.account_from.iter().find_map(|source| {
        let candidate = match source {
            AccountSource::SanUri => san_uris
                .iter()
                .find_map(|u| u.strip_prefix(opts.uri_prefix.as_str()))
                .map(str::to_string),
            AccountSource::SanEmail => san_emails.first().cloned(),
            AccountSource::SubjectCn => cn.clone(),
        }?;
        is_valid_account(&candidate).then_some(candidate)
    });

    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();

    let headers = IdentityHeaders {
        account: account
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok()),
        serial: header(&serial),
        fingerprint: header(&fingerprint),
        subject: header(&subject),
        not_after: header(&rfc3339(not_after)),
        client_cert: header(&format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(der)
        )),
        xfcc: header(&xfcc(&fingerprint, &subject, &san_uris, &san_dns)),
    };

    Ok(ClientIdentity {
        account,
        serial,
        fingerprint,
        subject,
        issuer_raw: cert.issuer().as_raw().to_vec(),
        san_uris,
        san_emails,
        san_dns,
        not_before,
        not_after,
        generation,
        issued_by_enrollment_ca,
        headers,
    })
}

/// A header value from text we rendered; any byte a header cannot carry (a control
/// character in a subject, say) is replaced, never passed through.
fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let cleaned: String = s
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

/// Envoy's form: `Hash=<hex>;Subject="<rfc4514>";URI=<uri>;DNS=<name>` (quotes in values
/// escaped).
fn xfcc(fingerprint: &str, subject: &str, uris: &[String], dns: &[String]) -> String {
    let quote = |v: &str| -> String {
        if v.contains([',', ';', '=', '"']) {
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            v.to_string()
        }
    };
    let mut s = format!(
        "Hash={fingerprint};Subject=\"{}\"",
        subject.replace('\\', "\\\\").replace('"', "\\\"")
    );
    for u in uris {
        let _ = write!(s, ";URI={}", quote(u));
    }
    for d in dns {
        let _ = write!(s, ";DNS={}", quote(d));
    }
    s
}

/// Whether `cert` carries a valid signature by the CA certificate `ca_der`.
fn signed_by(cert: &X509Certificate<'_>, ca_der: &[u8]) -> bool {
    let Ok((_, ca)) = X509Certificate::from_der(ca_der) else {
        return false;
    };
    // Cheap pre-check before the signature verification.
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// RFC 4514 string of a name: RDNs in reverse order, comma separated, with escaping.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            let short = match oid.to_id_string().as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.6" => Some("C"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(k), Ok(v)) => {
                    out.push_str(k);
                    out.push('=');
                    escape_4514(v, &mut out);
                }
                (key, _) => {
                    // Unknown type or non-string value: dotted OID = #hex of the DER value.
                    match key {
                        Some(k) => out.push_str(k),
                        None => out.push_str(&oid.to_id_string()),
                    }
                    out.push_str("=#");
                    out.push_str(&hex(atv.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_4514(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(normalize_serial("8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("00:8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("0x1").as_deref(), Some("01"));
        assert_eq!(normalize_serial("zz"), None);
        assert_eq!(normalize_serial(""), None);
        assert_eq!(normalize_serial("../etc"), None);
    }

    #[test]
    fn account_ids() {
        assert!(is_valid_account("alice"));
        assert!(is_valid_account("a.b_c@d+e-f"));
        assert!(!is_valid_account(""));
        assert!(!is_valid_account("a b"));
        assert!(!is_valid_account("a/b"));
        assert!(!is_valid_account(&"a".repeat(129)));
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_790_000_000), "2026-09-21T14:13:20Z");
    }

    #[test]
    fn escape() {
        let mut s = String::new();
        escape_4514(" a,b+c ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
    }
}
