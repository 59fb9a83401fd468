//! How the embedded store keeps each record: JSON values in redb tables, keyed by serial,
//! account or ticket hash (the key is not repeated inside the value).

use serde::{Deserialize, Serialize};

use crate::state::{
    AccountState, CertRecord, Revocation, RevocationReason, TicketRecord, UnixTime,
};

#[derive(Serialize, Deserialize)]
pub(super) struct StoredAccount {
    pub(super) generation: u64,
    pub(super) two_factor: bool,
    pub(super) created_at: UnixTime,
    pub(super) reset_at: Option<UnixTime>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredRevocation {
    pub(super) reason: RevocationReason,
    pub(super) revoked_at: UnixTime,
    pub(super) not_after: Option<UnixTime>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredCert {
    pub(super) account: String,
    pub(super) generation: u64,
    pub(super) fingerprint: String,
    pub(super) not_after: UnixTime,
    pub(super) issued_at: UnixTime,
    /// Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) issued_from: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredSession {
    pub(super) account: String,
    pub(super) serial: String,
    pub(super) bound_at: UnixTime,
    pub(super) expires_at: UnixTime,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredTicket {
    pub(super) account: String,
    pub(super) generation: u64,
    pub(super) expires_at: UnixTime,
}

impl StoredAccount {
    pub(super) fn into_state(self, account: &str) -> AccountState {
        AccountState {
            account: account.to_owned(),
            generation: self.generation,
            two_factor: self.two_factor,
            created_at: self.created_at,
            reset_at: self.reset_at,
        }
    }
}

impl StoredRevocation {
    pub(super) fn into_revocation(self, serial: &str) -> Revocation {
        Revocation {
            serial: serial.to_owned(),
            reason: self.reason,
            revoked_at: self.revoked_at,
            not_after: self.not_after,
        }
    }
}

impl StoredCert {
    pub(super) fn into_record(self, serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.to_owned(),
            account: self.account,
            generation: self.generation,
            fingerprint: self.fingerprint,
            not_after: self.not_after,
            issued_at: self.issued_at,
            issued_from: self.issued_from,
        }
    }
}

impl StoredTicket {
    pub(super) fn into_record(self, hash: &str) -> TicketRecord {
        TicketRecord {
            hash: hash.to_owned(),
            account: self.account,
            generation: self.generation,
            expires_at: self.expires_at,
        }
    }

    /// A ticket is usable strictly before `expires_at`.
    pub(super) fn expired(&self, now: UnixTime) -> bool {
        now >= self.expires_at
    }
}
