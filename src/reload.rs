//! Configuration reload triggers: changed files. (SIGHUP is caught by `cli`, which calls
//! [`crate::app::Reloader::reload`] too.)
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

use crate::app::Reloader;
use crate::config::Config;

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
