#![no_main]
//! Fuzzes `certgate::fuzz::h2_frames` (see `src/fuzz.rs`); seed corpus in
//! `fuzz/corpus/h2_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| certgate::fuzz::h2_frames(data));
