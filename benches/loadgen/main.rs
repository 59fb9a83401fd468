//! certgate's load generator and the other parts of the side-by-side benchmark that
//! `benches/compare.sh` runs against certgate, nginx and HAProxy:
//!
//! - `run`: drives a TLS server with client-certificate requests (keep-alive, a full
//!   handshake per request, or a resumed session per request) and prints one JSON line with
//!   req/s, latency percentiles, handshake kinds and the CPU time the server processes
//!   used in the measured window, split into user and kernel time, and with `--perf`
//!   their system calls in the same window;
//!   `--mode h2` runs concurrent HTTP/2 streams over a few connections;
//! - `idle`: opens many connections, holds them idle, prints the server's memory;
//! - `transfer`: one large download or upload (through a gateway, or plain HTTP straight
//!   to the upstream), its MiB/s and the server's resident memory sampled during it;
//! - `upstream`: the fast HTTP/1.1 upstream on loopback that every gateway forwards to
//!   (with endpoints that stream a large body out and discard one coming in);
//! - `pki`: the test PKI (certgate's dev PKI plus ECDSA and RSA-2048 client certificates);
//! - `probe`: one request, printing the response (what a gateway forwarded);
//! - `speed`: aws-lc's ECDSA/ECDH rates on this core;
//! - `syscalls`: counts a process's system calls for a moment with perf (whether perf
//!   works here);
//! - `report`: turns the JSON lines into `benches/RESULTS.md`'s tables.
//!
//! Loopback only; every command ends by itself. Built by `cargo bench --bench loadgen
//! --no-run`; `cargo bench` alone runs it with no command, which only prints a hint.

mod client;
mod hist;
mod pki;
mod procfs;
mod report;
mod speed;
mod syscalls;
mod transfer;
mod upstream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "certgate side-by-side benchmark tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a TLS server and print one JSON result line.
    Run(client::RunArgs),
    /// Hold many idle TLS connections and print the server's memory as JSON.
    Idle(client::IdleArgs),
    /// One large download or upload, timed, with the server's memory sampled, as JSON.
    Transfer(transfer::TransferArgs),
    /// Serve the fast HTTP/1.1 upstream.
    Upstream(upstream::UpstreamArgs),
    /// Write the benchmark PKI and state store.
    Pki(pki::PkiArgs),
    /// Send one request and print the raw response.
    Probe {
        #[command(flatten)]
        tls: client::TlsArgs,
        #[arg(long, default_value = "/headers")]
        path: String,
    },
    /// Print free loopback TCP ports.
    Ports {
        #[arg(default_value_t = 1)]
        count: usize,
    },
    /// aws-lc public-key operation rates on this core, as JSON.
    Speed {
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Render the results as Markdown.
    Report(report::ReportArgs),
    /// Count processes' system calls for a moment with perf, as JSON.
    Syscalls(syscalls::SyscallsArgs),
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nextest lists tests with `--list`. Neither is a
    // command for this tool.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    if args.len() == 1 {
        eprintln!(
            "loadgen: nothing to do without a command; benches/compare.sh runs it \
             (cargo bench --bench loadgen -- --help)"
        );
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse_from(args);
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = match cli.cmd {
        Cmd::Run(a) => client::run(a).map(|v| println!("{v}")),
        Cmd::Idle(a) => client::idle(a).map(|v| println!("{v}")),
        Cmd::Transfer(a) => transfer::run(a).map(|v| println!("{v}")),
        Cmd::Upstream(a) => upstream::run(a),
        Cmd::Pki(a) => pki::run(a),
        Cmd::Probe { tls, path } => client::probe(tls, path).map(|s| print!("{s}")),
        Cmd::Ports { count } => ports(count),
        Cmd::Speed { seconds } => speed::run(seconds.clamp(0.1, 10.0)).map(|v| println!("{v}")),
        Cmd::Report(a) => report::run(a),
        Cmd::Syscalls(a) => syscalls::run(a)
            .map(|v| println!("{v}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `count` loopback ports at once (so they differ), prints them, releases them.
fn ports(count: usize) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listeners = (0..count.min(64))
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}
