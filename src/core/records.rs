//! The records certgate keeps about accounts, certificates, revocations and tickets: what
//! the state store holds (`state::StateStore` speaks in these) and the gate judges.

use serde::Serialize;

/// Unix seconds.
pub type UnixTime = i64;

/// The per-account record (`acct:<account>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountState {
    pub account: String,
    /// Starts at 1; `reset` increments it. Certificates of an older generation are refused.
    pub generation: u64,
    pub two_factor: bool,
    pub created_at: UnixTime,
    /// Time of the last reset; certificates not issued by the enrollment CA whose
    /// `notBefore` is earlier are refused. `None` if never reset.
    pub reset_at: Option<UnixTime>,
}

/// RFC 5280 revocation reasons, by their RFC names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    RemoveFromCrl,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::CertificateHold => "certificateHold",
            Self::RemoveFromCrl => "removeFromCRL",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// Parses the RFC 5280 name (case-insensitive, so `cACompromise` and `caCompromise`
    /// both work).
    pub fn parse(s: &str) -> Option<Self> {
        const ALL: [RevocationReason; 10] = [
            RevocationReason::Unspecified,
            RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged,
            RevocationReason::Superseded,
            RevocationReason::CessationOfOperation,
            RevocationReason::CertificateHold,
            RevocationReason::RemoveFromCrl,
            RevocationReason::PrivilegeWithdrawn,
            RevocationReason::AaCompromise,
        ];
        ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s))
    }
}

/// A revocation (`revoked:<serial>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    /// Lowercase hex serial.
    pub serial: String,
    pub reason: RevocationReason,
    pub revoked_at: UnixTime,
    /// The certificate's `notAfter` when known; the record may be dropped after it.
    pub not_after: Option<UnixTime>,
}

/// A certificate certgate has seen or issued (`cert:<serial>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertRecord {
    pub serial: String,
    pub account: String,
    pub generation: u64,
    pub fingerprint: String,
    pub not_after: UnixTime,
    pub issued_at: UnixTime,
    /// The client address it was issued to (enrollment or renewal), when certgate issued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_from: Option<String>,
}

/// An enrollment ticket as stored: only the hash of the ticket string is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    /// Hex SHA-256 of the ticket string.
    pub hash: String,
    pub account: String,
    pub generation: u64,
    pub expires_at: UnixTime,
}

/// Which account's certificate received an application session cookie
/// (`identity.session_cookie`): only the hash of the cookie value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBinding {
    /// Hex SHA-256 of the cookie value.
    pub hash: String,
    pub account: String,
    /// The certificate the cookie was set for.
    pub serial: String,
    pub bound_at: UnixTime,
    /// The cookie's own end of life (its `Max-Age`/`Expires`, capped).
    pub expires_at: UnixTime,
}
