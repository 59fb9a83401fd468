//! The one clock: unix seconds from the system time. Every decision and record takes its
//! time from here (tests pass explicit times to the pure functions instead).

use crate::core::records::UnixTime;

/// Current unix time in seconds.
pub fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
