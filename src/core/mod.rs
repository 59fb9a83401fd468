//! The pure layer: the per-request decision and the ticket rules. No tokio, no hyper, no
//! I/O; everything else imports it and it imports nothing of ours but itself.

pub mod clock;
pub mod cookie;
pub mod decision;
pub mod flood;
pub mod gate;
pub mod identity;
pub mod outcome;
pub mod phase;
pub mod records;
pub mod text;
pub mod ticket;
