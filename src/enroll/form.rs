//! Reading what an enrollment request carries: the body, form fields, the query, the
//! ticket's shape, and a CSR in PEM or DER.

use super::limits::*;
use super::refusal::*;
use crate::http::body::{BodyError, read_limited};
use crate::pki::ca::CsrError;
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;

/// Reads the whole body, at most [`MAX_BODY_BYTES`] (else 413), within [`BODY_TIMEOUT`].
pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let (parts, body) = req.into_parts();
    read_limited(&parts.headers, body, MAX_BODY_BYTES, Some(BODY_TIMEOUT))
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => Refusal::TooLarge,
            BodyError::TimedOut => Refusal::BodyTimeout,
            BodyError::Unreadable => Refusal::BadBody,
        })
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space).
pub(super) fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| Refusal::BadForm)?;
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

pub(super) fn form_decode(s: &str) -> Result<String, Refusal> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Refusal::BadForm)
}

/// The first value of `name` in a query string.
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    form_fields(query.as_bytes())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Tickets are base64url of 32 bytes (43 characters); anything else is refused without
/// asking the store. A little slack in length keeps this a sanity check, not a format.
pub(super) fn plausible_ticket(t: &str) -> bool {
    (16..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The DER of a CSR sent as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or
/// as DER. PEM is read by `rustls-pki-types`.
pub(super) fn csr_der(body: &[u8]) -> Result<Vec<u8>, CsrError> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject as _;
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&0x30) {
        return Ok(trimmed.to_vec());
    }
    let text = std::str::from_utf8(trimmed)
        .map_err(|_| CsrError::Malformed("neither PEM nor DER".into()))?;
    // Older tools label the same PKCS#10 block "NEW CERTIFICATE REQUEST".
    let text = text
        .replace(
            "-----BEGIN NEW CERTIFICATE REQUEST-----",
            "-----BEGIN CERTIFICATE REQUEST-----",
        )
        .replace(
            "-----END NEW CERTIFICATE REQUEST-----",
            "-----END CERTIFICATE REQUEST-----",
        );
    CertificateSigningRequestDer::from_pem_slice(text.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| {
            CsrError::Malformed(format!(
                "no PEM \"CERTIFICATE REQUEST\" block could be read ({e})"
            ))
        })
}

/// The first common name of a certificate's issuer.
pub(super) fn issuer_name(der: &[u8]) -> Option<String> {
    first_cn(der, |c| c.issuer())
}

/// The first common name of a certificate's subject (for the page), or a generic label.
pub(super) fn common_name(der: &[u8]) -> String {
    first_cn(der, |c| c.subject()).unwrap_or_else(|| "certgate enrollment CA".into())
}

/// The first common name of the name `which` picks from the certificate in `der`.
fn first_cn(
    der: &[u8],
    which: for<'a> fn(
        &'a x509_parser::certificate::X509Certificate<'a>,
    ) -> &'a x509_parser::x509::X509Name<'a>,
) -> Option<String> {
    use x509_parser::prelude::FromDer as _;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    which(&c)
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}
