//! The `certgate` command line: `run`, `check-config`, `init`, `demo` and the `admin`
//! client commands. Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::pki::ca;
use crate::{app, demo};

/// Exit code for a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "certgate",
    version,
    long_version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("CERTGATE_COMMIT"),
        ", built ",
        env!("CERTGATE_BUILD_DATE"),
        ")"
    ),
    about = "mTLS auth gateway: the client certificate factor of two-factor sign-in",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error."
)]
pub struct Cli {
    /// Configuration file [default: config/certgate.yaml].
    #[arg(long, global = true, env = "CERTGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration is read from without `--config` or `CERTGATE_CONFIG`.
pub const DEFAULT_CONFIG: &str = "config/certgate.yaml";

impl Cli {
    /// The configuration file: `--config`, else `CERTGATE_CONFIG`, else [`DEFAULT_CONFIG`].
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        /// Create the embedded state store (state.path) if it does not exist. Needed on the
        /// first start only: without it a missing store file stops certgate, so that a lost
        /// file never silently forgets every revocation and reset.
        #[arg(long)]
        create_store: bool,
    },
    /// Validate the configuration (files, keys, addresses) without binding anything.
    CheckConfig {
        /// Also check what the file cannot show: the state store answers, the upstream
        /// answers, the certificates chain and are valid now, the key files are private.
        /// Each is reported ok or failed; any failure exits 1.
        #[arg(long)]
        online: bool,
    },
    /// Ask a running gateway whether it is ready (`GET /readyz` on `metrics.listen`):
    /// exit 0 when it answers 200, 1 otherwise. For container health checks.
    Health {
        /// The probe URL (default: http://<metrics.listen>/readyz from the config).
        #[arg(long)]
        url: Option<String>,
    },
    /// Write a development PKI (server certificate for localhost, enrollment CA), an admin
    /// token and a configuration that uses them.
    Init {
        /// Folder to write into (certs/, secrets/, config/certgate.yaml).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Start a self-contained demo: dev PKI, embedded store, built-in echo upstream, and
    /// the gateway on https://localhost:8443 (or a free port when that one is taken);
    /// prints the addresses it chose and the commands to try. With --config (or
    /// CERTGATE_CONFIG) it runs that configuration as it is instead of its own.
    Demo {
        /// Folder for the demo's PKI, config and store.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// The gateway's address [default: 127.0.0.1:8443, or a free port].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The admin API's address [default: 127.0.0.1:9444, or a free port].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
        /// The metrics address [default: 127.0.0.1:9090, or a free port].
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Admin API client: enable two-factor, reset, tickets, revoke, status, open connections.
    Admin(AdminArgs),
    /// Print a shell completion script: `certgate completions bash >
    /// /etc/bash_completion.d/certgate` (zsh: into a folder on $fpath as `_certgate`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `certgate man > /usr/local/share/man/man1/certgate.1`.
    Man,
    /// Make a new signing key for the identity assertion (headers.assertion.key_file); the
    /// old key is kept as the previous key and stays published in /.certgate/jwks.json, so
    /// assertions signed before the rotation still verify. Running gateways pick it up on
    /// their own (the files are watched) or on SIGHUP.
    RotateAssertionKey {
        /// The key file (default: headers.assertion.key_file from the config).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API base URL (default: from admin.listen in the config).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// File holding the admin token (default: admin.token_file from the config).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Enable two-factor for an account and print its enrollment link.
    Enable { account: String },
    /// Reset an account: every older certificate is refused from now on; prints a new link.
    Reset { account: String },
    /// Issue a new enrollment ticket for an account's current generation.
    Ticket { account: String },
    /// Revoke a certificate by serial (hex, `AB:CD:..` accepted).
    Revoke {
        serial: String,
        /// RFC 5280 reason, e.g. keyCompromise, superseded (default unspecified).
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Redis backend only: after the data-loss guard tripped (Redis came back empty, was
    /// flushed, or failed over to a replica that lost writes) and revocations and resets
    /// were applied again, mark the store as trusted so protected traffic flows again.
    /// Talks to Redis directly (the gateways refuse lookups until then).
    AcknowledgeDataLoss,
    /// List this instance's open connections of an account (peer, serial, protocol, opened
    /// at, requests served); with --close, close them.
    Connections {
        account: String,
        /// Close them (a tunnel is cut, HTTP/2 gets GOAWAY, HTTP/1.1 is closed).
        #[arg(long)]
        close: bool,
        /// With --close: only the connections of this certificate serial.
        #[arg(long, requires = "close")]
        serial: Option<String>,
    },
    /// Show an account (generation, two-factor, certificates) or, with --serial, a certificate.
    Status {
        /// Account id.
        account: Option<String>,
        /// Show this certificate instead of an account.
        #[arg(long)]
        serial: Option<String>,
    },
}

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = cli.config_path();
    match cli.command {
        Command::CheckConfig { online } => check_config(&config, online),
        Command::Health { ref url } => health(&config, url.as_deref()),
        Command::Run { create_store } => run_gateway(&config, create_store),
        Command::Init { ref dir, force } => init(dir, force),
        Command::Demo {
            ref dir,
            listen,
            admin_listen,
            metrics_listen,
        } => run_demo(
            dir,
            cli.config.as_deref(),
            demo::Wanted {
                listen,
                admin: admin_listen,
                metrics: metrics_listen,
            },
        ),
        Command::Admin(ref args) => admin(&config, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "certgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("certgate: cannot write the man page: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::RotateAssertionKey { ref key_file } => {
            rotate_assertion_key(&config, key_file.as_deref())
        }
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("certgate: configuration error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn check_config(path: &Path, online: bool) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "{}: ok (listen {}, upstream {}, state {}, enrollment {})",
        path.display(),
        cfg.listen,
        cfg.upstream.url,
        app::describe_store(&cfg.state.backend),
        if cfg.enrollment.is_some() {
            "on"
        } else {
            "off"
        },
    );
    for w in cfg.warnings() {
        eprintln!("{}: warning: {w}", path.display());
    }
    if !online {
        return ExitCode::SUCCESS;
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let checks = rt.block_on(crate::preflight::run(&cfg));
    let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    for c in &checks {
        let verdict = if c.ok { "ok" } else { "FAILED" };
        println!("{:width$}  {verdict:6}  {}", c.what, c.detail);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "certgate: {failed} of {} online checks failed",
        checks.len()
    );
    ExitCode::from(EXIT_RUNTIME)
}

fn health(config: &Path, url: Option<&str>) -> ExitCode {
    let target = match url {
        Some(u) => u.to_string(),
        None => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut addr = cfg.metrics.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{addr}/readyz")
        }
    };
    match probe(&target) {
        Ok((200, body)) => {
            println!("ready: {target} answered 200 {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "certgate: not ready: {target} answered {status} {}",
                body.trim()
            );
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("certgate: not ready: {target}: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// One plain-HTTP GET (the probe endpoints never need more): status and body.
fn probe(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed (the metrics listener is plain HTTP)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/readyz"),
    };
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {authority}"))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = Vec::new();
    tcp.take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("certgate: cannot start the runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        })
}

fn run_gateway(path: &Path, create_store: bool) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(&cfg.log);
    if create_store {
        match app::create_store_if_missing(&cfg) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!(
                    "certgate: --create-store is for the embedded store; state.backend in {} is redis",
                    path.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("certgate: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("certgate: cannot catch signals: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let gw = match app::start(cfg).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "certgate failed to start");
                eprintln!("certgate: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        crate::notify::ready("listening");
        signals.until_stop(Some(&gw.reloader)).await;
        stop(gw, &mut signals).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The shutdown after the first SIGTERM or SIGINT: lame duck for `shutdown.drain_delay`
/// (`/readyz` 503, new connections still served and asked to reconnect), then no new
/// connections and a drain of in-flight requests up to `shutdown.timeout`. A second
/// signal skips the rest of the lame-duck wait; one during the drain drops what is left.
async fn stop(gw: app::Gateway, signals: &mut Signals) {
    crate::notify::stopping();
    let delay = gw.drain_delay;
    if !delay.is_zero() {
        tracing::info!(
            drain_delay_ms = delay.as_millis() as u64,
            "shutting down: lame duck for shutdown.drain_delay (/readyz says 503, new \
             connections are still served and asked to reconnect); send the signal again \
             to skip the wait"
        );
        gw.lame_duck();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.stop() => tracing::info!("second signal: lame-duck wait skipped"),
        }
    }
    tracing::info!(
        "shutting down: no new connections; draining in-flight requests (up to shutdown.timeout)"
    );
    let force = gw.forcer();
    let drained = gw.shutdown();
    tokio::pin!(drained);
    tokio::select! {
        () = &mut drained => {}
        () = signals.stop() => {
            tracing::warn!("another signal: closing the connections still open");
            force.force();
            drained.await;
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from before the gateway starts (a signal that
/// arrives while it binds must not kill the process with the default action).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next SIGTERM or SIGINT.
    async fn stop(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Waits for SIGTERM or SIGINT. SIGHUP reloads the configuration through `reloader`
    /// (without one it is caught and logged: its default action would kill the process).
    async fn until_stop(&mut self, reloader: Option<&crate::reload::Reloader>) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match reloader {
                    // Success and failure are logged and counted by the reloader.
                    Some(r) => {
                        crate::notify::reloading();
                        let _ = r.reload().await;
                        crate::notify::ready("listening");
                    }
                    None => tracing::warn!("SIGHUP ignored: this command does not reload its configuration"),
                },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reloader;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init(dir: &Path, force: bool) -> ExitCode {
    let config_path = dir.join(demo::CONFIG_REL);
    // The config template is fixed text: an identical existing file is not "overwritten".
    let config_same =
        std::fs::read_to_string(&config_path).is_ok_and(|t| t == demo::CONFIG_TEMPLATE);
    if config_path.exists() && !config_same && !force {
        eprintln!(
            "certgate: {} already exists (use --force to overwrite)",
            config_path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match ca::write_dev_pki(dir, force) {
        Ok(pki) => {
            if !config_same
                && let Err(e) =
                    ca::write_file(&config_path, demo::CONFIG_TEMPLATE.as_bytes(), false)
            {
                eprintln!("certgate: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
            for p in &pki.written {
                println!("wrote {}", p.display());
            }
            // The store the config's state.path names (../data/certgate.db from config/).
            let store = dir.join(demo::STORE_REL);
            let existed = store.exists();
            if let Err(e) = crate::state::embedded::EmbeddedStore::open_or_create(&store) {
                eprintln!("certgate: state store: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
            if existed {
                println!("kept  {} (existing state store)", store.display());
            } else {
                println!("wrote {} (empty state store)", store.display());
            }
            if config_same {
                println!("kept  {} (already the default)", config_path.display());
            } else {
                println!("wrote {}", config_path.display());
            }
            println!(
                "\nNext: set upstream.url in {} to your application, then\n  certgate --config {} run",
                config_path.display(),
                config_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ ca::CaError::Exists(_)) => {
            eprintln!("certgate: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("certgate: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn rotate_assertion_key(config: &Path, key_file: Option<&Path>) -> ExitCode {
    use crate::pki::assertion;
    let (current, previous) = match key_file {
        Some(k) => (k.to_path_buf(), crate::config::file::previous_key_path(k)),
        None => match Config::load(config) {
            Ok(cfg) => match cfg.headers.assertion {
                Some(a) => (a.key_file, a.previous_key_file),
                None => {
                    eprintln!(
                        "certgate: headers.assertion is not set in {} (set headers.assertion.audience \
                         first, or name the file with --key-file)",
                        config.display()
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
            },
            Err(e) => {
                eprintln!(
                    "certgate: configuration error: {e}\n(to make the key anyway, name it: \
                     certgate rotate-assertion-key --key-file PATH)"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("certgate: {e}");
        ExitCode::from(EXIT_RUNTIME)
    };
    let new_pem = match assertion::generate_key_pem() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let kid_of = |pem: &[u8]| {
        assertion::key_der_from_pem(pem)
            .and_then(|der| {
                assertion::AssertionSigner::new(
                    "-",
                    "-",
                    std::time::Duration::from_secs(60),
                    &der,
                    None,
                )
            })
            .map(|s| s.kid().to_string())
    };
    // Written next to the files and renamed into place, so a gateway that reloads in
    // between sees either the old pair or the new one, never half a key.
    let staged = |target: &Path| {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        target.with_file_name(name)
    };
    let old_kid = match std::fs::read(&current) {
        Ok(old) => {
            let kid = kid_of(&old).ok();
            let tmp = staged(&previous);
            if let Err(e) = ca::write_file(&tmp, &old, true) {
                return fail(&e);
            }
            if let Err(e) = std::fs::rename(&tmp, &previous) {
                return fail(&format!(
                    "cannot move {} into place: {e}",
                    previous.display()
                ));
            }
            kid
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return fail(&format!("cannot read {}: {e}", current.display())),
    };
    let tmp = staged(&current);
    if let Err(e) = ca::write_file(&tmp, new_pem.as_bytes(), true) {
        return fail(&e);
    }
    if let Err(e) = std::fs::rename(&tmp, &current) {
        return fail(&format!(
            "cannot move {} into place: {e}",
            current.display()
        ));
    }
    let new_kid = kid_of(new_pem.as_bytes()).unwrap_or_default();
    println!("wrote {} (kid {new_kid})", current.display());
    match old_kid {
        Some(kid) => println!(
            "kept  {} (kid {kid}, still published until the next rotation)",
            previous.display()
        ),
        None => println!("(there was no key before)"),
    }
    println!(
        "Running gateways reload the key on their own (or on SIGHUP); with several instances, \
         copy both files to each."
    );
    ExitCode::SUCCESS
}

fn run_demo(dir: &Path, config: Option<&Path>, wanted: demo::Wanted) -> ExitCode {
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match demo_main(dir, config, wanted).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("certgate demo: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}

async fn demo_main(
    dir: &Path,
    explicit: Option<&Path>,
    wanted: demo::Wanted,
) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let mut signals = Signals::install()?;
    // With a config of its own the demo writes no PKI: only alice's files go to `dir`.
    let fresh = match explicit {
        Some(_) => {
            std::fs::create_dir_all(dir)?;
            false
        }
        None => demo::ensure_initialised(dir)?,
    };
    let config_path = explicit.map_or_else(|| dir.join(demo::CONFIG_REL), Path::to_path_buf);
    let usage = |e: String| {
        eprintln!("certgate demo: {e}");
        Ok(ExitCode::from(EXIT_USAGE))
    };
    let mut notes = Vec::new();
    // The demo's own file is rewritten only while it is the template or what the demo
    // wrote last time; once edited (or when --config names a file) it is used as it is,
    // and the addresses the demo has to change are changed in memory only.
    let text = std::fs::read_to_string(&config_path).unwrap_or_default();
    let existing = Config::load(&config_path).ok();
    let ours = match explicit {
        Some(_) => None,
        None => demo::written_by_demo(&text, existing.as_ref()),
    };
    let (cfg, echo, file_admin) = match ours {
        Some(previous) => {
            let preferred = previous.map(|(_, p)| p).unwrap_or_default();
            let (ports, chosen) = match demo::choose_ports(wanted, preferred) {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            notes.extend(chosen);
            let echo = demo::start_echo(previous.map(|(e, _)| e)).await?;
            let new_text = demo::demo_config(echo, ports);
            if new_text != text {
                crate::pki::ca::write_file(&config_path, new_text.as_bytes(), false)?;
            }
            let cfg = match load(&config_path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let admin = cfg.admin.listen;
            (cfg, Some(echo), admin)
        }
        None => {
            notes.push(match explicit {
                Some(_) => format!(
                    "running {} as it is (named by --config or CERTGATE_CONFIG)",
                    config_path.display()
                ),
                None => format!(
                    "{} was edited, so the demo uses it as it is and does not rewrite it \
                     (delete it to get the demo's own again)",
                    config_path.display()
                ),
            });
            let mut cfg = match load(&config_path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let file_admin = cfg.admin.listen;
            let preferred = demo::Ports {
                listen: cfg.listen,
                admin: cfg.admin.listen,
                metrics: cfg.metrics.listen,
            };
            let (ports, chosen) = match demo::choose_ports(wanted, preferred) {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            notes.extend(chosen);
            if let Some(en) = cfg.enrollment.as_mut()
                && en.public_url == format!("https://localhost:{}", cfg.listen.port())
            {
                en.public_url = format!("https://localhost:{}", ports.listen.port());
            }
            cfg.listen = ports.listen;
            cfg.admin.listen = ports.admin;
            cfg.metrics.listen = ports.metrics;
            // The built-in echo serves a loopback upstream.url nothing listens on.
            let url = &cfg.upstream.url;
            let loopback = format!(
                "{}:{}",
                url.host().unwrap_or_default(),
                url.port_u16().unwrap_or(80)
            )
            .parse::<std::net::SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback() && url.scheme_str() == Some("http"));
            let echo = match loopback {
                Some(addr) => demo::start_echo_at(addr).await,
                None => None,
            };
            (cfg, echo, file_admin)
        }
    };
    crate::logging::init(&cfg.log);
    app::create_store_if_missing(&cfg)?;
    let Some(enroll) = cfg.enrollment.clone() else {
        return usage(format!(
            "the demo needs enrollment (enrollment.enabled: true in {})",
            config_path.display()
        ));
    };
    let upstream = cfg.upstream.url.to_string();
    let token_file = cfg.admin.token_file.clone();
    let server_ca = cfg
        .tls
        .cert
        .path
        .parent()
        .map(|p| p.join("server-ca.pem"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| dir.join("certs/server-ca.pem"));
    let gw = app::start(cfg).await?;
    let (csr_ticket, browser_ticket) = demo::alice_tickets(&gw.cache, enroll.ticket_ttl).await?;

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "certgate".into());
    let d = dir.display();
    let (alice_key, alice_csr, alice_cert) = demo::alice_paths(dir);
    let (ak, ar, ac) = (
        alice_key.display(),
        alice_csr.display(),
        alice_cert.display(),
    );
    let port = gw.listen.port();
    let base = format!("https://localhost:{port}");
    let ca = demo::shown(&server_ca);
    let curl = format!("curl --cacert {ca}");
    let with_cert = format!("{curl} --cert {ac} --key {ak}");
    // `admin` reads its address from the config; name it when the demo moved it.
    let admin_cmd = if gw.admin == file_admin {
        format!("{exe} --config {} admin", config_path.display())
    } else {
        format!(
            "{exe} --config {} admin --url http://{}",
            config_path.display(),
            gw.admin
        )
    };
    let upstream_line = match echo {
        Some(e) => format!("built-in echo server on {e}"),
        None => format!("{upstream} (from the config)"),
    };
    for n in &notes {
        println!("certgate demo: {n}");
    }
    let lines = [
        String::new(),
        format!(
            "certgate demo is running ({}).",
            match (explicit, fresh) {
                (Some(_), _) => "your configuration",
                (None, true) => "new dev PKI and store",
                (None, false) => "existing dev PKI and store",
            }
        ),
        format!("  gateway   {base}   (server CA: {ca})"),
        format!("  admin     http://{}   (token: {})", gw.admin, demo::shown(&token_file)),
        format!("  metrics   http://{}/metrics", gw.metrics),
        format!("  upstream  {upstream_line}"),
        String::new(),
        "Two-factor is on for alice; two one-time enrollment tickets were made for her.".into(),
        String::new(),
        "Try these in another terminal:".into(),
        String::new(),
        "  # 1. No certificate: refused with 403 no_cert".into(),
        format!("  {curl} {base}/hello"),
        String::new(),
        "  # 2. Enroll alice from the command line: the key stays on your machine, the gateway".into(),
        "  #    certifies the request's public key and returns the chain".into(),
        format!("  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ak} -subj /CN=alice -out {ar}"),
        format!("  {curl} --data-binary @{ar} -H 'Authorization: Bearer {csr_ticket}' -o {ac} {base}/.certgate/enroll/csr"),
        String::new(),
        "  # 3. With alice's certificate: the echo upstream shows the identity headers certgate added".into(),
        format!("  {with_cert} {base}/hello"),
        String::new(),
        "  # 4. Spoofed identity headers are stripped".into(),
        format!("  {with_cert} -H 'X-Client-Account: mallory' {base}/hello"),
        String::new(),
        "  # 5. Enroll in a browser: trust the server CA above, open this link, click Generate Certificate,".into(),
        "  #    import the downloaded alice.p12, then open the gateway and pick alice's certificate".into(),
        format!("  {base}/.certgate/enroll?ticket={browser_ticket}"),
        String::new(),
        "  # 6. Alice's account: generation, two-factor, certificates".into(),
        format!("  {admin_cmd} status alice"),
        String::new(),
        "  # 7. Reset alice (she lost her certificate): the old certificate is refused at once (403 reset);".into(),
        "  #    the reset prints a new enrollment link".into(),
        format!("  {admin_cmd} reset alice"),
        format!("  {with_cert} {base}/hello"),
        String::new(),
        "  # 8. Revoke a certificate by serial (see 'admin status alice'); the CRL lists it".into(),
        format!("  {admin_cmd} revoke <serial> --reason keyCompromise"),
        format!("  {curl} -s {base}/.certgate/crl | openssl crl -inform DER -noout -text"),
        String::new(),
        "  # 9. Metrics".into(),
        format!("  curl -s http://{}/metrics | grep -E 'certgate_(requests|enrollments)_total'", gw.metrics),
        String::new(),
        format!("(tickets work once; 'admin ticket alice' makes a new one. Remove {d}/data to start over)"),
        "Press Ctrl-C to stop.".into(),
    ];
    println!("{}", lines.join("\n"));
    signals.until_stop(Some(&gw.reloader)).await;
    stop(gw, &mut signals).await;
    Ok(ExitCode::SUCCESS)
}

fn admin(config: &Path, args: &AdminArgs) -> ExitCode {
    use crate::admin::client::{self as client, AdminCommand};
    let cmd = match &args.action {
        // Talks to Redis directly, not to the admin API.
        AdminAction::AcknowledgeDataLoss => return acknowledge_data_loss(config),
        AdminAction::Enable { account } => AdminCommand::Enable {
            account: account.clone(),
        },
        AdminAction::Reset { account } => AdminCommand::Reset {
            account: account.clone(),
        },
        AdminAction::Ticket { account } => AdminCommand::Ticket {
            account: account.clone(),
        },
        AdminAction::Revoke { serial, reason } => AdminCommand::Revoke {
            serial: serial.clone(),
            reason: Some(reason.clone()),
        },
        AdminAction::Connections {
            account,
            close: false,
            ..
        } => AdminCommand::Connections {
            account: account.clone(),
        },
        AdminAction::Connections {
            account,
            close: true,
            serial,
        } => AdminCommand::CloseConnections {
            account: account.clone(),
            serial: serial.clone(),
        },
        AdminAction::Status {
            account: _,
            serial: Some(serial),
        } => AdminCommand::CertificateStatus {
            serial: serial.clone(),
        },
        AdminAction::Status {
            account: Some(account),
            serial: None,
        } => AdminCommand::Status {
            account: account.clone(),
        },
        AdminAction::Status {
            account: None,
            serial: None,
        } => {
            eprintln!("certgate admin status: give an account, or --serial SERIAL");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The config is needed only for what the flags do not give.
    let (url, token_file) = match (&args.url, &args.token_file) {
        (Some(u), Some(t)) => (u.clone(), t.clone()),
        (url, token_file) => match load(config) {
            Ok(c) => (
                url.clone()
                    .unwrap_or_else(|| client::url_from_listen(c.admin.listen)),
                token_file.clone().unwrap_or(c.admin.token_file),
            ),
            Err(code) => {
                eprintln!("(or pass both --url and --token-file)");
                return code;
            }
        },
    };
    let token = match client::read_token_file(&token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("certgate admin: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match rt.block_on(client::run(&url, &token, &cmd)) {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{}", client::render(&cmd, &v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certgate admin: {e}");
            ExitCode::from(if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_RUNTIME
            })
        }
    }
}

fn acknowledge_data_loss(config: &Path) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let crate::config::StateBackend::Redis(redis) = &cfg.state.backend else {
        eprintln!(
            "certgate admin acknowledge-data-loss: only for state.backend: redis (this config uses the embedded store)"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let store = crate::state::redis::RedisStore::open(redis)?;
        store.acknowledge_data_loss().await
    });
    match result {
        Ok(()) => {
            println!(
                "Data loss acknowledged: the gateways accept the store again (within a few seconds).\n\
                 Revocations and resets made before the loss must have been applied again."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certgate admin acknowledge-data-loss: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
