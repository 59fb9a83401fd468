#![no_main]
//! Fuzzes `certgate::fuzz::path` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::path(data));
