//! Fuzz target `regmap`: see `voltshare_fuzz::regmap`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voltshare_fuzz::regmap(data);
});
