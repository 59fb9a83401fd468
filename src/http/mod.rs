//! HTTP pieces shared by the data plane, enrollment and the admin API: refusal pages.

pub mod pages;
