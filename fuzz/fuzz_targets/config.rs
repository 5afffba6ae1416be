//! Fuzz target `config`: see `voltshare_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voltshare_fuzz::config(data);
});
