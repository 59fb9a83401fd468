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

use crate::core::identity::{
    AccountSource, ClientIdentity, GENERATION_URI_PREFIX, IdentityHeaders,
};
use crate::core::text::{hex, is_valid_account, rfc3339, rfc4514, serial_hex};

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

/// Parses a verified leaf certificate. `der` must be the leaf the handshake verified.
pub fn parse(der: &[u8], opts: &IdentityOptions) -> Result<ClientIdentity, IdentityError> {
    parse_digested(der, &Sha256::digest(der).into(), opts)
}

/// [`parse`] for a caller that already hashed the leaf (`sha256` is SHA-256 of `der`): the
/// digest is the fingerprint, so the leaf is hashed once.
pub fn parse_digested(
    der: &[u8],
    sha256: &[u8; 32],
    opts: &IdentityOptions,
) -> Result<ClientIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadEncoding(e.to_string()))?;
    let serial = serial_hex(cert.raw_serial());
    let fingerprint = hex(sha256);
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
