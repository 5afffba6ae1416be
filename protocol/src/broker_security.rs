//! How a client proves itself to the MQTT broker and checks the broker in
//! turn: TLS with a CA file, a client certificate and key, and/or a username
//! with a password file.
//!
//! This is data only, the same for every client of ours (meter agent,
//! clearing engine, controller): [`BrokerSecurity::check`] validates its
//! shape without touching a file. Reading the files and building the rustls
//! client configuration happens in each crate that connects (the meter
//! agent and the engine must not depend on each other, and this crate does
//! no IO). The key names are the ones used in configuration files, so an
//! error can name the key the user has to fix.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Broker security settings. The default is plain TCP without credentials
/// (the demo and local test brokers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSecurity {
    /// Connect with TLS, verifying the broker's certificate against `ca_file`.
    #[serde(default)]
    pub tls: bool,
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file with this client's certificate (chain), for client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// MQTT username (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (one line, mode 0600): never the password
    /// itself in a configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// A problem with broker security settings: the key, the file if one is
/// involved, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSecurityError {
    /// The key relative to the settings (`ca_file`, `cert_file`, ...).
    pub key: &'static str,
    pub file: Option<PathBuf>,
    pub why: String,
}

impl fmt::Display for BrokerSecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`", self.key)?;
        if let Some(p) = &self.file {
            write!(f, " ({})", p.display())?;
        }
        write!(f, ": {}", self.why)
    }
}

impl std::error::Error for BrokerSecurityError {}

impl BrokerSecurityError {
    pub fn new(key: &'static str, why: impl Into<String>) -> BrokerSecurityError {
        BrokerSecurityError {
            key,
            file: None,
            why: why.into(),
        }
    }

    pub fn file(key: &'static str, file: &std::path::Path, why: impl Into<String>) -> Self {
        BrokerSecurityError {
            key,
            file: Some(file.to_owned()),
            why: why.into(),
        }
    }
}

/// The settings with their shape checked: what the loader of each crate
/// turns into a rustls configuration and MQTT credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedSecurity<'a> {
    /// CA file, when TLS is on.
    pub ca_file: Option<&'a std::path::Path>,
    /// Client certificate and key, when given.
    pub client: Option<(&'a std::path::Path, &'a std::path::Path)>,
    /// Username and password file, when given.
    pub credentials: Option<(&'a str, &'a std::path::Path)>,
}

impl BrokerSecurity {
    /// Whether the settings authenticate this client at all (a client
    /// certificate or a username).
    pub fn has_credentials(&self) -> bool {
        (self.tls && self.cert_file.is_some()) || self.username.is_some()
    }

    /// Checks the shape of the settings (which keys go together), without
    /// reading any file.
    pub fn check(&self) -> Result<CheckedSecurity<'_>, BrokerSecurityError> {
        let empty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        for (key, p) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("password_file", &self.password_file),
        ] {
            if empty(p) {
                return Err(BrokerSecurityError::new(key, "must not be empty"));
            }
        }
        let (ca_file, client) = if self.tls {
            let ca = self
                .ca_file
                .as_deref()
                .ok_or_else(|| BrokerSecurityError::new("ca_file", "required with tls = true"))?;
            let client = match (&self.cert_file, &self.key_file) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(BrokerSecurityError::new(
                        "key_file",
                        "required with cert_file",
                    ));
                }
                (None, Some(_)) => {
                    return Err(BrokerSecurityError::new(
                        "cert_file",
                        "required with key_file",
                    ));
                }
            };
            (Some(ca), client)
        } else {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
            ] {
                if set {
                    return Err(BrokerSecurityError::new(
                        key,
                        "only meaningful with tls = true",
                    ));
                }
            }
            (None, None)
        };
        let credentials = match (&self.username, &self.password_file) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                if u.is_empty() {
                    return Err(BrokerSecurityError::new("username", "must not be empty"));
                }
                Some((u.as_str(), p.as_path()))
            }
            (Some(_), None) => {
                return Err(BrokerSecurityError::new(
                    "password_file",
                    "required with username",
                ));
            }
            (None, Some(_)) => {
                return Err(BrokerSecurityError::new(
                    "username",
                    "required with password_file",
                ));
            }
        };
        Ok(CheckedSecurity {
            ca_file,
            client,
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> BrokerSecurity {
        BrokerSecurity {
            tls: true,
            ca_file: Some("ca.crt".into()),
            cert_file: Some("h01.crt".into()),
            key_file: Some("h01.key".into()),
            ..BrokerSecurity::default()
        }
    }

    #[test]
    fn plain_and_full_settings_pass() {
        let plain = BrokerSecurity::default();
        assert_eq!(
            plain.check(),
            Ok(CheckedSecurity {
                ca_file: None,
                client: None,
                credentials: None
            })
        );
        assert!(!plain.has_credentials());
        let t = tls();
        let c = t.check().expect("valid");
        assert_eq!(c.ca_file, Some(std::path::Path::new("ca.crt")));
        assert!(c.client.is_some());
        assert!(t.has_credentials());
    }

    /// Each broken shape names the key to fix.
    #[test]
    fn shape_errors_name_the_key() {
        let cases: Vec<(BrokerSecurity, &str, &str)> = vec![
            (
                BrokerSecurity {
                    ca_file: None,
                    ..tls()
                },
                "ca_file",
                "required with tls",
            ),
            (
                BrokerSecurity {
                    key_file: None,
                    ..tls()
                },
                "key_file",
                "required with cert_file",
            ),
            (
                BrokerSecurity {
                    cert_file: None,
                    ..tls()
                },
                "cert_file",
                "required with key_file",
            ),
            (
                BrokerSecurity {
                    tls: false,
                    ..tls()
                },
                "ca_file",
                "only meaningful with tls",
            ),
            (
                BrokerSecurity {
                    username: Some("h01".into()),
                    ..tls()
                },
                "password_file",
                "required with username",
            ),
            (
                BrokerSecurity {
                    password_file: Some("pw".into()),
                    ..tls()
                },
                "username",
                "required with password_file",
            ),
            (
                BrokerSecurity {
                    ca_file: Some("".into()),
                    ..tls()
                },
                "ca_file",
                "must not be empty",
            ),
        ];
        for (s, key, words) in cases {
            let e = s.check().expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(e.why.contains(words), "{e}");
            assert!(e.to_string().starts_with(&format!("key `{key}`")), "{e}");
        }
    }
}
