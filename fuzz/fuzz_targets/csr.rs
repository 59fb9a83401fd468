#![no_main]
//! Fuzzes `certgate::fuzz::csr` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/csr`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::csr(data));
