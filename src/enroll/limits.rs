//! Enrollment's limits: body size, passphrase length, failed-attempt rate.

use std::time::Duration;

/// Largest accepted request body (CSR or form); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Shortest accepted PKCS#12 passphrase, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// Longest accepted passphrase, in characters (a bound, not a policy).
pub const MAX_PASSPHRASE_CHARS: usize = 1024;
/// Failed ticket attempts allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILED_ATTEMPTS: u32 = 10;
/// The rate-limiting window for failed ticket attempts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The whole request body must arrive within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
