#![no_main]
//! Fuzzes `certgate::fuzz::cookies` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/cookies`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::cookies(data));
