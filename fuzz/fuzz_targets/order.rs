//! Fuzz target `order`: see `voltshare_fuzz::order`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voltshare_fuzz::order(data);
});
