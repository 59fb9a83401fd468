//! The benchmark's PKI and state, made with certgate's own code: the development PKI
//! (ECDSA P-256 server CA, server certificate for localhost, enrollment CA), and two client
//! certificates from the enrollment CA for account `bench` — one with an ECDSA P-256 key,
//! one with an RSA-2048 key — recorded in an embedded state store where `bench` has
//! two-factor enabled, exactly as enrollment would leave them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certgate::pki::ca::{self, CaIssuer};
use certgate::state::embedded::EmbeddedStore;
use certgate::state::{CertRecord, StateStore};
use clap::Args;

pub const ACCOUNT: &str = "bench";

#[derive(Debug, Clone, Args)]
pub struct PkiArgs {
    /// Folder to write into (certs/, secrets/, state.db).
    #[arg(long)]
    pub out: PathBuf,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn run(a: PkiArgs) -> Result<(), BoxError> {
    let dir = &a.out;
    ca::write_dev_pki(dir, true)?;
    let issuer = CaIssuer::from_files(
        &dir.join("certs/enroll-ca.pem"),
        &dir.join("certs/enroll-ca.key"),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store: Arc<dyn StateStore> =
            Arc::new(EmbeddedStore::open_or_create(&dir.join("state.db"))?);
        let acct = store
            .enable_two_factor(ACCOUNT, certgate::core::clock::now())
            .await?;
        let ec = ca::new_key()?;
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
        for (name, key) in [("client-ec", &ec), ("client-rsa", &rsa)] {
            let issued = issuer.issue_client(
                key,
                ACCOUNT,
                acct.generation,
                Duration::from_secs(30 * 86400),
            )?;
            store
                .record_certificate(CertRecord {
                    serial: issued.serial.clone(),
                    account: ACCOUNT.into(),
                    generation: acct.generation,
                    fingerprint: issued.fingerprint.clone(),
                    not_after: issued.not_after,
                    issued_at: issued.issued_at,
                    issued_from: None,
                })
                .await?;
            write(dir, &format!("certs/{name}.pem"), &issued.cert_pem, false)?;
            write(
                dir,
                &format!("certs/{name}.key"),
                &key.serialize_pem(),
                true,
            )?;
        }
        Ok::<_, BoxError>(())
    })?;
    // HAProxy wants the certificate and its key in one file.
    let bundle = std::fs::read_to_string(dir.join("certs/server.pem"))?
        + &std::fs::read_to_string(dir.join("certs/server.key"))?;
    write(dir, "certs/server-bundle.pem", &bundle, true)?;
    Ok(())
}

fn write(dir: &Path, rel: &str, content: &str, secret: bool) -> Result<(), BoxError> {
    ca::write_file(&dir.join(rel), content.as_bytes(), secret)?;
    Ok(())
}
