//! The enrollment page's script is built from what the repository says: the banner of
//! `assets/enroll/dist/enroll.js` (written by `assets/enroll/build.sh`) names the SHA-256 of
//! `assets/enroll/src/enroll.js` and the version of each bundled library, which must match
//! the source and `package-lock.json`; each bundled library has its licence in
//! `assets/enroll/LICENSES.md`. A changed source or lockfile without a rebuild fails here.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/enroll")
}

fn banner() -> String {
    let bundle = std::fs::read_to_string(dir().join("dist/enroll.js")).expect("dist/enroll.js");
    let first = bundle.lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("/* certgate enroll.js: built by assets/enroll/build.sh"),
        "dist/enroll.js has no build banner: {first}"
    );
    first
}

/// The bundled packages, as the banner names them.
const BUNDLED: &[&str] = &[
    "pkijs",
    "asn1js",
    "@noble/hashes",
    "@peculiar/utils",
    "bytestreamjs",
];

#[test]
fn the_bundle_is_built_from_the_current_source() {
    let source = std::fs::read(dir().join("src/enroll.js")).unwrap();
    let sha: String = Sha256::digest(&source)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let banner = banner();
    assert!(
        banner.contains(&format!("from src/enroll.js sha256={sha} ")),
        "dist/enroll.js was built from another src/enroll.js: run \
         `cd assets/enroll && npm ci && sh build.sh` and commit dist/enroll.js\n{banner}"
    );
}

#[test]
fn the_bundle_has_the_locked_library_versions_and_their_licences() {
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("package-lock.json")).unwrap())
            .expect("package-lock.json");
    let licences = std::fs::read_to_string(dir().join("LICENSES.md")).unwrap();
    let banner = banner();
    let mut names: Vec<&str> = BUNDLED.to_vec();
    names.push("esbuild");
    for name in names {
        let version = lock["packages"][format!("node_modules/{name}")]["version"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is not in package-lock.json"));
        assert!(
            banner.contains(&format!(" {name}@{version}")),
            "dist/enroll.js was not built with {name}@{version} of package-lock.json: \
             rebuild it\n{banner}"
        );
    }
    // Every runtime dependency in the lockfile is bundled, and has its licence text.
    let packages = lock["packages"].as_object().unwrap();
    for (path, p) in packages {
        let Some(name) = path.strip_prefix("node_modules/") else {
            continue;
        };
        if p["dev"].as_bool() == Some(true) {
            continue;
        }
        assert!(
            BUNDLED.contains(&name),
            "{name} is a runtime dependency in package-lock.json but not listed as bundled"
        );
        assert!(
            licences.contains(&format!("## {name}\n")),
            "LICENSES.md lacks {name}"
        );
        let version = p["version"].as_str().unwrap();
        assert!(
            licences.contains(&format!("| {name} | {version} |")),
            "LICENSES.md does not name {name} {version}"
        );
    }
}
