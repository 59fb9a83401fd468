//! HTTP pieces shared by the data plane, enrollment and the admin API: refusal pages,
//! bearer credentials and limited body reading.

pub mod auth;
pub mod body;
pub mod pages;
