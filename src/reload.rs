//! Configuration reload: [`Reloader`] re-reads and validates the file, refuses changes that
//! need a restart and hands the new configuration to `app` to build and swap in; the
//! triggers are changed files (below) and SIGHUP (caught by `cli`, which calls
//! [`Reloader::reload`] too).
//!
//! Watches the parent folders of the config file and of every certificate, key, CA and CRL
//! it names — Kubernetes updates a mounted secret by swapping a symlink in the folder, which
//! a watch on the file itself would miss — and reloads after changes settle (debounce).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::metrics::Metrics;

/// Applies configuration reloads: re-reads and validates the file, refuses changes that
/// need a restart, and swaps the [`Runtime`] atomically. On any failure the running
/// configuration stays and the failure is counted.
pub struct Reloader {
    path: std::path::PathBuf,
    /// Builds the runtime of a new configuration and swaps it in (`app` owns both).
    apply: Box<Apply>,
    metrics: Metrics,
    /// The configuration currently applied.
    active: std::sync::Mutex<Arc<Config>>,
    /// One reload at a time.
    serial: tokio::sync::Mutex<()>,
}

/// Why the runtime of a valid new configuration could not be built (TLS material,
/// enrollment or upstream setup), as `app` reports it.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Builds and swaps in the runtime of a new, validated configuration.
type Apply = dyn Fn(&Config) -> Result<(), BuildError> + Send + Sync;

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Build(BuildError),
    #[error("these keys changed but only take effect after a restart, so nothing was applied: {0}")]
    NeedsRestart(String),
}

impl Reloader {
    /// A reloader for the file `config` came from, with `config` applied. `apply` builds
    /// and swaps in the runtime of a new, validated configuration.
    pub fn new(
        config: &Config,
        metrics: Metrics,
        apply: impl Fn(&Config) -> Result<(), BuildError> + Send + Sync + 'static,
    ) -> Self {
        Reloader {
            path: config.source.clone(),
            apply: Box::new(apply),
            metrics,
            active: std::sync::Mutex::new(Arc::new(config.clone())),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration file being watched.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The applied configuration.
    pub fn active(&self) -> Arc<Config> {
        self.active
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Reloads the configuration file. New handshakes and new requests (also on open
    /// connections) use the result; open connections are not dropped.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one = self.serial.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.metrics.config_reloads.get_or_create(&ok_label()).inc();
                self.metrics.config_last_reload_success.set(1);
                tracing::info!(file = %self.path.display(), "configuration reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&failed_label())
                    .inc();
                self.metrics.config_last_reload_success.set(0);
                tracing::error!(file = %self.path.display(), error = %e, "configuration reload failed; the running configuration stays");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let new = self.load().await?;
        let old = self.active();
        let changed = restart_only_changes(&old, &new);
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed.join(", ")));
        }
        (self.apply)(&new).map_err(ReloadError::Build)?;
        if new.log.level != old.log.level {
            match crate::logging::set_level(&new.log.level) {
                Ok(crate::logging::LevelChange::EnvWins) => tracing::warn!(
                    level = %new.log.level,
                    "log.level changed, but CERTGATE_LOG is set and stays in force"
                ),
                Ok(_) => tracing::info!(level = %new.log.level, "log level changed"),
                Err(e) => tracing::warn!(error = %e, "log.level could not be applied"),
            }
        }
        for w in new.warnings() {
            tracing::warn!("configuration: {w}");
        }
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }
}

impl Reloader {
    /// Reads and validates the file off the async workers, within [`LOAD_TIMEOUT`]: a file
    /// on a hung mount must not stop the listeners.
    async fn load(&self) -> Result<Config, ReloadError> {
        let path = self.path.clone();
        let timed_out = || crate::config::ConfigError {
            file: self.path.clone(),
            line: None,
            key: "(file)".into(),
            message: format!(
                "reading the configuration and the files it names took longer than \
                 {LOAD_TIMEOUT:?} (a hung mount?)"
            ),
        };
        match tokio::time::timeout(
            LOAD_TIMEOUT,
            tokio::task::spawn_blocking(move || Config::load(&path)),
        )
        .await
        {
            Ok(Ok(loaded)) => Ok(loaded?),
            Ok(Err(_)) | Err(_) => Err(ReloadError::Config(timed_out())),
        }
    }
}

/// The bound on reading a configuration for a reload.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn ok_label() -> crate::metrics::OutcomeLabels {
    crate::metrics::OutcomeLabels {
        result: crate::metrics::Outcome::success,
    }
}

fn failed_label() -> crate::metrics::OutcomeLabels {
    crate::metrics::OutcomeLabels {
        result: crate::metrics::Outcome::failure,
    }
}

/// Keys whose new value cannot be applied to a running process (sockets already bound,
/// the store already open, the connection limit and logging already set up).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen");
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin.listen");
    }
    if old.admin.token_file != new.admin.token_file {
        out.push("admin.token_file");
    }
    if old.metrics.listen != new.metrics.listen {
        out.push("metrics.listen");
    }
    if old.limits.response_buffer != new.limits.response_buffer {
        out.push("limits.response_buffer");
    }
    if old.limits.max_connections != new.limits.max_connections {
        out.push("limits.max_connections");
    }
    if old.state != new.state {
        out.push("state");
    }
    if old.log.format != new.log.format {
        out.push("log.format");
    }
    if old.telemetry != new.telemetry {
        out.push("telemetry");
    }
    out
}

/// Quiet time after the last file event before reloading (editors and secret updates
/// write several files and events in a burst).
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Every file the configuration depends on.
pub fn watched_files(cfg: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(cfg.source.clone());
    files.insert(cfg.tls.cert.path.clone());
    files.insert(cfg.tls.key.path.clone());
    for ca in &cfg.client_auth.trusted_cas {
        files.insert(ca.path.clone());
    }
    for crl in &cfg.client_auth.crls {
        files.insert(crl.path.clone());
    }
    if let Some(e) = &cfg.enrollment {
        files.insert(e.ca_cert.path.clone());
        files.insert(e.ca_key.path.clone());
    }
    if let Some(a) = &cfg.headers.assertion {
        files.insert(a.key_file.clone());
        files.insert(a.previous_key_file.clone());
    }
    files
}

fn folders(files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p
            }
        })
        .collect()
}

/// Watches the configuration's files until `stop` resolves, reloading after changes.
/// A watcher that cannot be set up is logged; SIGHUP still works then.
pub async fn watch_files(reloader: Arc<Reloader>, stop: impl Future<Output = ()>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PathBuf>(256);
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                let _ = tx.try_send(p);
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP");
            stop.await;
            return;
        }
    };
    let mut files = watched_files(&reloader.active());
    let mut watching = BTreeSet::new();
    let mut rewatch = |watcher: &mut notify::RecommendedWatcher, files: &BTreeSet<PathBuf>| {
        let want = folders(files);
        for old in watching.difference(&want) {
            let _ = watcher.unwatch(old);
        }
        for new in want.difference(&watching) {
            if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(folder = %new.display(), error = %e, "cannot watch folder");
            }
        }
        watching = want;
    };
    rewatch(&mut watcher, &files);

    tokio::pin!(stop);
    loop {
        // Wait for a relevant event.
        let relevant = tokio::select! {
            _ = &mut stop => return,
            p = rx.recv() => match p {
                Some(p) => is_relevant(&p, &files),
                None => return,
            },
        };
        if !relevant {
            continue;
        }
        // Debounce: keep draining until quiet.
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                p = rx.recv() => if p.is_none() { return },
            }
        }
        if reloader.reload().await.is_ok() {
            files = watched_files(&reloader.active());
            rewatch(&mut watcher, &files);
        }
    }
}

/// An event path counts when it is one of the files, or sits in the same folder as one
/// and names a Kubernetes-style `..data` swap.
fn is_relevant(path: &Path, files: &BTreeSet<PathBuf>) -> bool {
    if files.contains(path) {
        return true;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.starts_with("..") {
        return true;
    }
    // Compare by file name within the same folder (paths may differ in `..` segments).
    files.iter().any(|f| {
        f.file_name() == path.file_name()
            && f.parent().and_then(|p| p.canonicalize().ok())
                == path.parent().and_then(|p| p.canonicalize().ok())
    })
}
