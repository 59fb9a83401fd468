//! The Redis key layout (one place for every key name) and Cluster slot hashing: hash
//! tags, CRC16, and the tag of each slot's data-loss marker.

use std::sync::OnceLock;

use crate::state::StoreError;

// ---------------------------------------------------------------------------------------
// Keys.

/// The key names, in one place (see the module header).
#[derive(Debug, Clone)]
pub struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The data-loss marker of Cluster slot `slot` (`0..SLOTS`): `{p}slot:{<tag>}`, whose
    /// hash tag hashes to that slot (the prefix has no braces: [`check_prefix`]).
    pub fn slot_marker(&self, slot: usize) -> String {
        let tag = slot_tags().get(slot).map(String::as_str).unwrap_or("");
        format!("{}slot:{{{tag}}}", self.prefix)
    }

    /// The marker of the slot that `key` lives in.
    pub fn marker_for(&self, key: &str) -> String {
        self.slot_marker(usize::from(key_slot(key.as_bytes())))
    }

    pub fn account(&self, account: &str) -> String {
        format!("{}acct:{account}", self.prefix)
    }

    /// Same slot as [`Keys::account`]: the hash tag is the account key itself.
    pub fn account_tickets(&self, account: &str) -> String {
        format!("{{{}acct:{account}}}:tickets", self.prefix)
    }

    /// Same slot as [`Keys::account`].
    pub fn account_certs(&self, account: &str) -> String {
        format!("{{{}acct:{account}}}:certs", self.prefix)
    }

    pub fn cert(&self, serial: &str) -> String {
        format!("{}cert:{serial}", self.prefix)
    }

    pub fn revoked(&self, serial: &str) -> String {
        format!("{}revoked:{serial}", self.prefix)
    }

    pub fn ticket(&self, hash: &str) -> String {
        format!("{}ticket:{hash}", self.prefix)
    }

    pub fn session(&self, hash: &str) -> String {
        format!("{}session:{hash}", self.prefix)
    }

    pub fn revoked_index(&self) -> String {
        format!("{}index:revoked", self.prefix)
    }

    pub fn tickets_index(&self) -> String {
        format!("{}index:tickets", self.prefix)
    }

    pub fn crl_number(&self) -> String {
        format!("{}crl_number", self.prefix)
    }

    pub fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key under the prefix (glob characters escaped).
    pub(super) fn all_pattern(&self) -> String {
        let mut p = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('*');
        p
    }
}

// ---------------------------------------------------------------------------------------
// Cluster slots.

/// The number of Redis Cluster slots.
pub const SLOTS: usize = 16384;

/// The key prefix is literal: a brace in it would be a Redis Cluster hash tag, putting
/// every key (slot markers included) in one slot or the markers outside the slots they
/// guard. The configuration refuses braces too; this keeps hand-built configurations out.
pub(super) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.contains(['{', '}']) {
        return Err(StoreError::Unavailable(format!(
            "redis configuration: key prefix {prefix:?} must not contain '{{' or '}}' \
             (it would be a cluster hash tag)"
        )));
    }
    Ok(())
}

/// The hash tag Redis hashes for `key`: the bytes between the first `{` and the first `}`
/// after it, when not empty.
pub(super) fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.
pub(super) fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Cluster slot of `key`, as Redis computes it.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS as u16
}

/// For every slot, the shortest decimal string (the first found counting up from "0") that
/// hashes to it: the hash tags of the slot markers. Built once; about 110,000 tries cover
/// all 16384 slots (the unit tests check that every slot is covered).
pub(super) fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = n.to_string();
            let slot = usize::from(key_slot(tag.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}
