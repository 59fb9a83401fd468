#![no_main]
//! Fuzzes `certgate::fuzz::headers` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/headers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::headers(data));
