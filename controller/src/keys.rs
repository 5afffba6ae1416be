//! Key files: a 32-byte ed25519 secret as hex, written with mode 0600 and
//! never overwritten.

use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

/// A fresh random key from the operating system's generator.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// Writes a new key file (mode 0600); fails if the file exists.
pub fn write_new(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(hex::encode(key.to_bytes()).as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Reads a key file written by [`write_new`].
pub fn read(path: &Path) -> std::io::Result<SigningKey> {
    let text = std::fs::read_to_string(path)?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a voltshare key file (64 hex digits): {e}"),
        )
    })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Reads the key at `path`, or makes and writes one if there is none.
pub fn load_or_create(path: &Path) -> std::io::Result<SigningKey> {
    match read(path) {
        Ok(k) => Ok(k),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = generate();
            write_new(path, &k)?;
            Ok(k)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_mode_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("vs-keys-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("k.key");
        let _ = std::fs::remove_file(&p);
        let k = generate();
        write_new(&p, &k).expect("write");
        assert_eq!(read(&p).expect("read").to_bytes(), k.to_bytes());
        assert!(write_new(&p, &k).is_err(), "must not overwrite");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&p, "zz").expect("write");
        assert!(read(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
