//! Connections before HTTP: the PROXY protocol header from an L4 load balancer.

pub mod proxy_protocol;
