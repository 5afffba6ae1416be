//! The gateway configuration parser (the `controller` crate's `config`).

use std::path::Path;

/// The gateway configuration: parse, then validate (files named in it are
/// read, as `voltshare config check` does; the fuzzer's inputs rarely name
/// real ones).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(raw) = controller::config::parse(text, path) {
        let _ = raw.validate(text, path);
    }
}
