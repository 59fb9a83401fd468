//! Enrollment tickets: generation, hashing and the record to store.
//!
//! A ticket is 256 bits from the system RNG, rendered as base64url without padding (43
//! characters, safe in a URL without escaping). It is shown once, to the admin who asked
//! for it; the store keeps only its hex SHA-256 ([`hash`]), bound to an account and a
//! generation, with an expiry. Consuming it (single use, atomic) is the store's job
//! (`StateStore::consume_ticket`); the enrollment handlers call [`hash`] on what the user
//! presents and look that up.
//!
//! Ticket strings are plain `String`s so that callers can put them in URLs and JSON, which
//! means `Debug` does not hide them: never log one. The admin API logs the account and the
//! generation of an issued ticket, never the ticket.

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::core::records::{TicketRecord, UnixTime};
use crate::core::text::hex;

/// Random bytes per ticket (256 bits).
pub const TICKET_BYTES: usize = 32;

/// A fresh ticket: base64url (no padding) of 32 random bytes.
pub fn generate() -> String {
    let mut bytes = [0u8; TICKET_BYTES];
    // aws-lc's RNG only fails when the operating system cannot provide entropy at all;
    // handing out a predictable ticket instead is not an option, so this is fatal.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key of a ticket: lowercase hex SHA-256 of the ticket string as presented.
pub fn hash(ticket: &str) -> String {
    hex(&Sha256::digest(ticket.as_bytes()))
}

/// When a ticket issued at `now` with `ttl` expires (saturating, never before `now`).
pub fn expires_at(now: UnixTime, ttl: Duration) -> UnixTime {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    now.saturating_add(ttl)
}

/// A new ticket for `account` at `generation`, issued at `now` with `ttl`: the ticket
/// string (the only copy; it is not recoverable from the record) and the record to store,
/// which holds only its [`hash`] and the expiry [`expires_at`]`(now, ttl)`.
pub fn new(account: &str, generation: u64, ttl: Duration, now: UnixTime) -> (String, TicketRecord) {
    let ticket = generate();
    let record = TicketRecord {
        hash: hash(&ticket),
        account: account.to_string(),
        generation,
        expires_at: expires_at(now, ttl),
    };
    (ticket, record)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generate_is_base64url_of_32_bytes() {
        let t = generate();
        assert_eq!(t.len(), 43, "{t}");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{t}"
        );
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        assert_eq!(raw.len(), TICKET_BYTES);
    }

    #[test]
    fn generate_does_not_repeat() {
        let set: HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(set.len(), 1000);
    }

    #[test]
    fn hash_is_lowercase_hex_sha256_of_the_string() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash("").len(), 64);
        assert_ne!(hash("a"), hash("A"));
    }

    #[test]
    fn expiry_saturates() {
        assert_eq!(expires_at(100, Duration::from_secs(60)), 160);
        assert_eq!(expires_at(100, Duration::from_secs(u64::MAX)), i64::MAX);
    }

    #[test]
    fn new_ticket_record_holds_only_the_hash() {
        let (ticket, stored) = new("alice", 3, Duration::from_secs(3600), 1_000);
        assert_eq!(
            stored,
            TicketRecord {
                hash: hash(&ticket),
                account: "alice".into(),
                generation: 3,
                expires_at: 4_600,
            }
        );
        // The ticket itself appears nowhere in what was stored.
        assert!(!format!("{stored:?}").contains(&ticket));
    }
}
