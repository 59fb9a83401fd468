//! The embedded store against real files: creation, reopening, damage and full writes.

use super::*;
use crate::state::RevocationReason;

fn temp_store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_or_create(&dir.path().join("state/certgate.db")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn corrupt_value_is_an_error_not_a_panic() {
    let (_dir, store) = temp_store();
    {
        let tx = store.database().unwrap().begin_write().unwrap();
        tx.open_table(ACCOUNTS)
            .unwrap()
            .insert("alice", b"{not json".as_slice())
            .unwrap();
        tx.open_table(REVOKED)
            .unwrap()
            .insert("0a", b"\x00\x01".as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        store.account("alice").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.enable_two_factor("alice", 1).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.revocation("0a").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.revocations().await,
        Err(StoreError::Corrupt(_))
    ));
    // The failed write changed nothing, and the damaged revocation does not stop a sweep.
    assert!(matches!(
        store.account("alice").await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.sweep(i64::MAX / 2).await.unwrap(), 0);
}

#[tokio::test]
async fn second_open_of_the_same_file_is_refused() {
    let (dir, _store) = temp_store();
    let err = EmbeddedStore::open(&dir.path().join("state/certgate.db")).unwrap_err();
    match err {
        StoreError::Unavailable(m) => assert!(m.contains("locked"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn new_folder_and_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/certgate.db");
    let _store = EmbeddedStore::open_or_create(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
}

#[tokio::test]
async fn a_missing_or_empty_file_is_refused_not_replaced_by_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/certgate.db");
    let unavailable = |r: Result<EmbeddedStore, StoreError>| match r {
        Err(StoreError::Unavailable(m)) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    };

    let m = unavailable(EmbeddedStore::open(&path));
    assert!(
        m.contains("does not exist") && m.contains("--create-store"),
        "{m}"
    );
    assert!(!path.exists(), "open must not create the file");
    assert!(
        !path.parent().unwrap().exists(),
        "open must not create the folder"
    );

    // Made when asked; then a revocation is kept across reopening.
    let store = EmbeddedStore::open_or_create(&path).unwrap();
    store
        .revoke(Revocation {
            serial: "0a".into(),
            reason: RevocationReason::KeyCompromise,
            revoked_at: 1,
            not_after: None,
        })
        .await
        .unwrap();
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(store.revocation("0a").await.unwrap().is_some());
    drop(store);
    // open_or_create opens an existing store as it is.
    let store = EmbeddedStore::open_or_create(&path).unwrap();
    assert!(store.revocation("0a").await.unwrap().is_some());
    drop(store);

    // Truncated to 0 bytes: refused by both, and left as it is for the operator.
    std::fs::File::create(&path).unwrap();
    for r in [
        EmbeddedStore::open(&path),
        EmbeddedStore::open_or_create(&path),
    ] {
        let m = unavailable(r);
        assert!(m.contains("empty (0 bytes)"), "{m}");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

    // Deleted: refused again.
    std::fs::remove_file(&path).unwrap();
    assert!(unavailable(EmbeddedStore::open(&path)).contains("does not exist"));
}

#[test]
fn garbage_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certgate.db");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    assert!(EmbeddedStore::open(&path).is_err());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certgate.db");
    drop(EmbeddedStore::open_or_create(&path).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(META_SCHEMA_VERSION, SCHEMA_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    match EmbeddedStore::open(&path).unwrap_err() {
        StoreError::Unavailable(m) => assert!(m.contains("schema version"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn sweep_keeps_revocations_within_the_retention_window() {
    let (_dir, store) = temp_store();
    let now = 1_800_000_000;
    let rev = |serial: &str, not_after| Revocation {
        serial: serial.into(),
        reason: RevocationReason::Superseded,
        revoked_at: now - 100,
        not_after,
    };
    store.revoke(rev("01", Some(now - 10))).await.unwrap();
    store
        .revoke(rev("02", Some(now - REVOCATION_RETENTION_AFTER_EXPIRY - 1)))
        .await
        .unwrap();
    assert_eq!(store.sweep(now).await.unwrap(), 1);
    assert!(store.revocation("01").await.unwrap().is_some());
    assert!(store.revocation("02").await.unwrap().is_none());
}

/// A full disk (here: the file-size limit, which fails a growing write with EFBIG as a full
/// disk fails it with ENOSPC) fails that write with a clear error, loses no acknowledged
/// write, and once there is room again the store works without a restart.
#[cfg(unix)]
#[tokio::test]
async fn a_full_disk_fails_the_write_and_keeps_the_store() {
    let (dir, store) = temp_store();
    let path = dir.path().join("state/certgate.db");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let r = revocation(&format!("a{i:02}"));
        store.revoke(r.clone()).await.unwrap();
        acknowledged.push(r);
    }
    let size = std::fs::metadata(&path).unwrap().len();
    // Nextest runs each test in its own process, so the limit and the ignored SIGXFSZ
    // reach no other test.
    let limit = |bytes: u64| unsafe {
        let l = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &l), 0);
    };
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    limit(size);
    let mut failure = None;
    for i in 0..5000 {
        let r = revocation(&format!("b{i:04}-{}", "f".repeat(200)));
        match store.revoke(r.clone()).await {
            Ok(_) => acknowledged.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    limit(u64::MAX);
    let failure = failure.expect("a write failed when the file could not grow");
    let text = failure.to_string();
    assert!(matches!(failure, StoreError::Unavailable(_)), "{failure:?}");
    assert!(
        text.contains("File too large") || text.contains("No space left"),
        "the error names the cause: {text}"
    );

    // Room again: the same store answers and writes, without a restart.
    let after = revocation("c00");
    store
        .revoke(after.clone())
        .await
        .expect("writes work again");
    acknowledged.push(after);
    for r in &acknowledged {
        assert!(
            store.revocation(&r.serial).await.unwrap().is_some(),
            "{}",
            r.serial
        );
    }
    drop(store);
    let reopened = EmbeddedStore::open(&path).expect("the file opens again");
    for r in &acknowledged {
        assert!(
            reopened.revocation(&r.serial).await.unwrap().is_some(),
            "acknowledged {} lost",
            r.serial
        );
    }
}

#[cfg(unix)]
fn revocation(serial: &str) -> Revocation {
    Revocation {
        serial: serial.to_string(),
        reason: crate::state::RevocationReason::KeyCompromise,
        revoked_at: 1_700_000_000,
        not_after: None,
    }
}
