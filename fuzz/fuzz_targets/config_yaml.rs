#![no_main]
//! Fuzzes `certgate::fuzz::config_yaml` (see `src/fuzz.rs`); seed corpus in `fuzz/corpus/config_yaml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::config_yaml(data));
