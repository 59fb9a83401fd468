#![no_main]
//! Fuzzes `certgate::fuzz::pkcs12` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/pkcs12`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::pkcs12(data));
