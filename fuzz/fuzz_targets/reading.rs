//! Fuzz target `reading`: see `voltshare_fuzz::reading`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voltshare_fuzz::reading(data);
});
