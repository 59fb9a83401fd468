//! certgate: an mTLS auth gateway.
//!
//! Module map, from the ground up (imports point down; `tests/module_graph.rs` keeps every
//! cycle out and `core` pure):
//! - [`core`]: the pure layer (records, clock, text, identity type, [`core::gate`] and
//!   [`core::decision`], the [`core::outcome::Outcome`] every self-written answer takes,
//!   tickets).
//! - [`config`]: YAML → validated runtime [`config::Config`]; reads and decodes every file.
//! - [`metrics`]: every metric handle and name.
//! - [`pki`]: the issuing CA, CSRs, CRLs, dev PKI and PKCS#12 bundles.
//! - [`tls`]: rustls server config and accept, client verifier, identity parsing.
//! - [`state`]: the `StateStore` contract and events, the cache, the backends.
//! - [`http`]: one rendering of any outcome (HTML or JSON), bearer credentials, limited
//!   bodies.
//! - [`enroll`]: certgate's own `/.certgate/` endpoints (enrollment, CA, CRL).
//! - [`telemetry`]: OpenTelemetry request spans over OTLP, when configured.
//! - [`live`]: the open connections with a certificate, closed when the decision changes.
//! - [`proxy`]: one request: strip, classify, decide, forward or refuse.
//! - [`admin`]: the admin API, its CLI client, and the route table and bodies both share.
//! - [`server`]: connections (accept, PROXY → TLS → h1/h2, watchdog, plain HTTP/1).
//! - [`logging`]: the log subscriber, its level changeable while running.
//! - [`preflight`]: `check-config --online` (store, upstream, chains, key files).
//! - [`reload`]: configuration reload and file watching.
//! - [`app`]: wires everything from a `Config` (only `cli` imports it).
//! - [`demo`], [`cli`]: the demo and the `certgate` command line.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod demo;
pub mod enroll;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod preflight;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
