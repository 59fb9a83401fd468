//! Every committed fuzz corpus (`fuzz/corpus/<target>/`) replayed through its target's
//! entry point (`certgate::fuzz`) on stable Rust: the short run of every fuzz target that
//! CI does. Long runs use cargo-fuzz (README, "Fuzzing").

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("csr", certgate::fuzz::csr),
    ("cookies", certgate::fuzz::cookies),
    ("pkcs12", certgate::fuzz::pkcs12),
    ("config_yaml", certgate::fuzz::config_yaml),
    ("proxy_protocol", certgate::fuzz::proxy_protocol),
    ("path", certgate::fuzz::path),
    ("identity", certgate::fuzz::identity),
    ("headers", certgate::fuzz::headers),
    ("h2_frames", certgate::fuzz::h2_frames),
];

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seed corpus for {name}");
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            target(&data);
        }
    }
    // Every target has a corpus folder and every folder a target.
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no target here"
        );
    }
}
