//! Redis hash fields to records and back, and the small encodings the backend stores.

use std::collections::HashMap;
use std::str::FromStr;

use crate::state::{
    AccountState, CertRecord, Revocation, RevocationReason, SessionBinding, StoreError,
    TicketRecord,
};

/// DER certificates as the PEM text the Redis client reads.
pub(super) fn pem_certificates(certs: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<u8> {
    certs
        .iter()
        .map(|c| crate::core::text::pem_encode("CERTIFICATE", c.as_ref()))
        .collect::<String>()
        .into_bytes()
}

/// A Redis hash as read.
pub(super) type Fields = HashMap<String, String>;

pub(super) fn new_store_id() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG does not fail on supported platforms; a zero id would still be unique
    // enough to detect a replaced meta record.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flat `[field, value, …]` reply as a map.
pub(super) fn pairs(flat: Vec<String>) -> Fields {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(k, v);
    }
    out
}

pub(super) fn field<T: FromStr>(
    fields: &Fields,
    what: &str,
    key: &str,
    name: &str,
) -> Result<T, StoreError> {
    let raw = fields
        .get(name)
        .ok_or_else(|| StoreError::Corrupt(format!("{what} {key:?} has no {name}")))?;
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {key:?}: {name} {raw:?} does not parse")))
}

pub(super) fn optional<T: FromStr>(
    fields: &Fields,
    what: &str,
    key: &str,
    name: &str,
) -> Result<Option<T>, StoreError> {
    match fields.get(name) {
        None => Ok(None),
        Some(_) => field(fields, what, key, name).map(Some),
    }
}

pub(super) fn decode_account(account: &str, f: &Fields) -> Result<AccountState, StoreError> {
    let two_factor: u8 = field(f, "account", account, "two_factor")?;
    Ok(AccountState {
        account: account.to_string(),
        generation: field(f, "account", account, "generation")?,
        two_factor: two_factor != 0,
        created_at: field(f, "account", account, "created_at")?,
        reset_at: optional(f, "account", account, "reset_at")?,
    })
}

pub(super) fn decode_revocation(serial: &str, f: &Fields) -> Result<Revocation, StoreError> {
    let reason_text: String = field(f, "revocation", serial, "reason")?;
    let reason = RevocationReason::parse(&reason_text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "revocation {serial:?}: unknown reason {reason_text:?}"
        ))
    })?;
    Ok(Revocation {
        serial: serial.to_string(),
        reason,
        revoked_at: field(f, "revocation", serial, "revoked_at")?,
        not_after: optional(f, "revocation", serial, "not_after")?,
    })
}

pub(super) fn decode_cert(serial: &str, f: &Fields) -> Result<CertRecord, StoreError> {
    Ok(CertRecord {
        serial: serial.to_string(),
        account: field(f, "certificate", serial, "account")?,
        generation: field(f, "certificate", serial, "generation")?,
        fingerprint: field(f, "certificate", serial, "fingerprint")?,
        not_after: field(f, "certificate", serial, "not_after")?,
        issued_at: field(f, "certificate", serial, "issued_at")?,
        issued_from: f.get("issued_from").filter(|v| !v.is_empty()).cloned(),
    })
}

pub(super) fn decode_session(hash: &str, f: &Fields) -> Result<SessionBinding, StoreError> {
    Ok(SessionBinding {
        hash: hash.to_string(),
        account: field(f, "session", hash, "account")?,
        serial: field(f, "session", hash, "serial")?,
        bound_at: field(f, "session", hash, "bound_at")?,
        expires_at: field(f, "session", hash, "expires_at")?,
    })
}

pub(super) fn decode_ticket(hash: &str, f: &Fields) -> Result<TicketRecord, StoreError> {
    Ok(TicketRecord {
        hash: hash.to_string(),
        account: field(f, "ticket", hash, "account")?,
        generation: field(f, "ticket", hash, "generation")?,
        expires_at: field(f, "ticket", hash, "expires_at")?,
    })
}
