#![no_main]
//! Fuzzes `certgate::fuzz::proxy_protocol` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/proxy_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::proxy_protocol(data));
