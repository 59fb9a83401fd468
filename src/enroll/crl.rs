//! The CRL of certgate-issued revoked serials: signed again only when the revocations
//! change or the CRL nears its `nextUpdate`, with a store-backed CRL number.

use super::refusal::*;
use crate::state::{Revocation, RevocationReason};
use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// The last CRL built, with what it was built from.
pub(super) struct CachedCrl {
    pub(super) der: Bytes,
    pub(super) digest: [u8; 32],
    pub(super) this_update: i64,
    pub(super) next_update: i64,
    pub(super) checked_at: Instant,
}

pub(super) fn crl_response(der: &Bytes) -> Response<Full<Bytes>> {
    let mut r = with_type(
        Response::new(Full::new(der.clone())),
        "application/pkix-crl",
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// SHA-256 over the sorted revocations: equal digests, equal CRL content.
pub(super) fn revocations_digest(revocations: &[Revocation]) -> [u8; 32] {
    let mut lines: Vec<String> = revocations
        .iter()
        .map(|r| format!("{} {} {}", r.serial, r.revoked_at, r.reason.as_str()))
        .collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

pub(super) fn crl_reason(r: RevocationReason) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match r {
        RevocationReason::Unspecified => return None,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::CertificateHold => R::CertificateHold,
        RevocationReason::RemoveFromCrl => R::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    })
}

pub(super) fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
