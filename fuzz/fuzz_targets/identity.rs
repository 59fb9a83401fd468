#![no_main]
//! Fuzzes `certgate::fuzz::identity` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/identity`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::identity(data));
