//! The data-loss guard's records: what this instance trusts, what `meta` says with each
//! lookup, and the Cluster lookups that run beside a slot marker. The guard itself is
//! `guard.rs`.

#[derive(Default)]
pub(super) struct GuardState {
    /// The `store_id` this instance trusts; `None` until the first contact.
    pub(super) known_id: Option<String>,
    /// Set once the persistence settings were checked.
    pub(super) persistence_checked: bool,
}

/// A Cluster lookup's operation, run beside its slot marker (the `MARKED` script).
#[derive(Clone, Copy)]
pub(super) enum Marked {
    /// `HGETALL`.
    Read,
    /// `ZRANGE 0 -1`.
    List,
    /// `HGETALL`, then `DEL`.
    Consume,
    /// `INCR`.
    Incr,
}

impl Marked {
    pub(super) fn name(self) -> &'static str {
        match self {
            Marked::Read => "read",
            Marked::List => "list",
            Marked::Consume => "consume",
            Marked::Incr => "incr",
        }
    }
}

/// `meta` as read with each lookup.
pub(super) struct MetaView {
    pub(super) store_id: Option<String>,
    pub(super) data_lost_at: Option<String>,
}
