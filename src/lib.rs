//! certgate: an mTLS auth gateway.
//!
//! Module map (dependencies point one way; nothing imports `app` or `cli`):
//! - [`config`]: YAML → validated runtime [`config::Config`].
//! - [`identity`]: the typed client identity parsed from the leaf certificate.
//! - [`metrics`]: every metric handle and name.
//! - [`gate`]: the pure per-request decision.
//! - [`state`]: the `StateStore` trait, backends and the read-through cache.
//! - [`tls`]: rustls server config, client verifier, accept loop.
//! - [`verifier`]: the client-certificate verifier that remembers accepted chains.
//! - [`pages`]: refusal pages (HTML for browsers, JSON otherwise).
//! - [`proxy_protocol`]: PROXY v1/v2 headers from an L4 load balancer.
//! - [`proxy`]: per-request handling and forwarding upstream.
//! - [`ticket`]: enrollment ticket generation and hashing.
//! - [`ca`]: certificate issuing and the development PKI.
//! - [`p12`]: PKCS#12 bundles for browsers (behind one function).
//! - [`enroll`]: certgate's own `/.certgate/` endpoints (enrollment, CA, CRL).
//! - [`admin`]: the admin API, health probes and `/metrics`.
//! - [`admin_client`]: the `certgate admin …` HTTP client.
//! - [`reload`]: configuration reload on changed files.
//! - [`app`]: wires everything from a `Config`, binds, serves, drains.
//! - [`demo`]: the self-contained demo (echo upstream, dev PKI).
//! - [`cli`]: the `certgate` command line.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod demo;
pub mod enroll;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod tls;
