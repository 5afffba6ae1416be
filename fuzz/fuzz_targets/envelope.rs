//! Fuzz target `envelope`: see `voltshare_fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voltshare_fuzz::envelope(data);
});
