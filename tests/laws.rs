//! Property tests of the laws the fuzz targets assert (`certgate::fuzz`), over inputs
//! built from the pieces attackers use: identity header names in every mix of case, `_`
//! and `-`; paths made of dot segments, parameters, escapes and look-alikes.

use proptest::prelude::*;

/// Identity header names and near misses, to be respelled.
const NAMES: &[&str] = &[
    "x-client-account",
    "x-client-cert-serial",
    "x-client-cert-fingerprint",
    "client-cert",
    "client-cert-chain",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-clientele",
    "accept",
    "x-app-token",
];

/// `name` with each `-` as `-` or `_` and each letter in either case, by `bits`.
fn respell(name: &str, bits: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let flip = bits >> (i % 64) & 1 == 1;
            match c {
                '-' if flip => '_',
                c if flip => c.to_ascii_uppercase(),
                c => c,
            }
        })
        .collect()
}

const PIECES: &[&str] = &[
    "/",
    "public",
    "static",
    "secret",
    ".",
    "..",
    "..;",
    ";x",
    "%2e",
    "%2E%2e",
    "%252e",
    "%2f",
    "%5c",
    "%3b",
    "%ef%bc%8e",
    "%e2%80%a5",
    "%25",
    "a",
    "b",
    "//",
    "%00",
    "%zz",
    "\\",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Sanitised headers never contain an identity header, in any spelling, under any
    /// `headers.underscores` policy.
    #[test]
    fn identity_headers_never_survive(picks in prop::collection::vec((0..NAMES.len(), any::<u64>()), 1..8)) {
        let mut text = String::new();
        for (i, bits) in picks {
            text.push_str(&respell(NAMES[i], bits));
            text.push_str(": v\n");
        }
        certgate::fuzz::headers(text.as_bytes());
    }

    /// A refused path is refused whatever the routes, and a path classifies as its
    /// normalised form does.
    #[test]
    fn paths_classify_as_their_normal_form(picks in prop::collection::vec(0..PIECES.len(), 1..10)) {
        let mut path = String::from("/");
        for i in picks {
            path.push_str(PIECES[i]);
        }
        certgate::fuzz::path(path.as_bytes());
    }
}
