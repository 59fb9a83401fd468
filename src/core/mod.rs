//! The pure layer: the per-request decision and the ticket rules. No tokio, no hyper, no
//! I/O; everything else imports it and it imports nothing of ours but itself.

pub mod gate;
pub mod ticket;
