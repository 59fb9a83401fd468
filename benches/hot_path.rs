//! Hot-path micro-benchmarks: identity parse (once per connection) and the per-request
//! decision (path classification + state lookup on a cache hit + judge).
//!
//!     cargo bench --bench hot_path

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use certgate::config::{CacheConfig, OnError, StateBackend, StateConfig};
use certgate::core::gate::{self, Facts};
use certgate::core::identity::AccountSource;
use certgate::metrics::Metrics;
use certgate::state::cache::StateCache;
use certgate::state::embedded::EmbeddedStore;
use certgate::state::{Revocation, RevocationReason, StateStore};
use certgate::tls::identity::{self, IdentityOptions};
use criterion::{Criterion, criterion_group, criterion_main};

struct Fixture {
    leaf_der: Vec<u8>,
    opts: IdentityOptions,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    certgate::pki::ca::write_dev_pki(dir.path(), false).expect("dev pki");
    let ca = certgate::pki::ca::CaIssuer::from_files(
        &dir.path().join("certs/enroll-ca.pem"),
        &dir.path().join("certs/enroll-ca.key"),
    )
    .expect("ca");
    let key = certgate::pki::ca::new_key().expect("key");
    let issued = ca
        .issue_client(&key, "alice", 1, Duration::from_secs(86400))
        .expect("issue");
    Fixture {
        leaf_der: issued.cert_der,
        opts: IdentityOptions {
            account_from: vec![
                AccountSource::SanUri,
                AccountSource::SanEmail,
                AccountSource::SubjectCn,
            ],
            uri_prefix: "urn:certgate:account:".into(),
            enrollment_ca: Some(ca.cert_der.clone()),
        },
    }
}

fn bench_identity(c: &mut Criterion) {
    let f = fixture();
    c.bench_function("identity_parse_enrollment_cert", |b| {
        b.iter(|| identity::parse(black_box(&f.leaf_der), &f.opts).expect("parse"))
    });
    let foreign = IdentityOptions {
        enrollment_ca: None,
        ..f.opts.clone()
    };
    c.bench_function("identity_parse_foreign_cert", |b| {
        b.iter(|| identity::parse(black_box(&f.leaf_der), &foreign).expect("parse"))
    });
}

fn bench_decision(c: &mut Criterion) {
    let f = fixture();
    let id = identity::parse(&f.leaf_der, &f.opts).expect("parse");
    let public = vec!["/static".to_string(), "/login".to_string()];
    c.bench_function("gate_classify_protected_path", |b| {
        b.iter(|| gate::classify(black_box("/app/orders/123"), &public).expect("path"))
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open_or_create(&dir.path().join("bench.db")).expect("store"));
    let cfg = StateConfig {
        backend: StateBackend::Embedded {
            path: dir.path().join("bench.db"),
        },
        cache: CacheConfig {
            ttl: Duration::from_secs(3600),
            max_entries: 100_000,
        },
        on_error: OnError::FailClosed,
        max_stale: Duration::from_secs(300),
    };
    let cache = StateCache::new(store.clone(), &cfg, Metrics::new());
    rt.block_on(async {
        cache.enable_two_factor("alice", 1).await.expect("enable");
        store
            .revoke(Revocation {
                serial: "0badc0de".into(),
                reason: RevocationReason::KeyCompromise,
                revoked_at: 1,
                not_after: None,
            })
            .await
            .expect("revoke");
        // Warm the cache.
        cache
            .lookup(&id.serial, id.account.as_deref())
            .await
            .expect("lookup");
    });

    c.bench_function("decision_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let route = gate::classify(black_box("/app/orders/123"), &public).expect("path");
            let state = cache.lookup_shared(&id.serial, id.account.as_deref()).await;
            let d = gate::decide(
                Some(&id),
                Some(state.as_ref().map(|s| s.view()).map_err(|e| *e)),
                Facts::default(),
                1_800_000_000,
            );
            black_box((route, d))
        })
    });
}

criterion_group!(benches, bench_identity, bench_decision);
criterion_main!(benches);
