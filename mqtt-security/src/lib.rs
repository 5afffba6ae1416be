//! Broker security with its files read, shared by every role that connects
//! to the broker (the meter agent, the clearing engine, the household
//! controller). The settings themselves are pure data in
//! [`protocol::BrokerSecurity`] (protocol does no IO); this crate reads their
//! files once, up front, so that an error names the key and the file before
//! anything connects.

use protocol::{BrokerSecurity, BrokerSecurityError};
use rumqttc::MqttOptions;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Broker security with its files read: the rustls client configuration
/// (the `ring` provider, passed explicitly, so no process-wide default
/// provider is needed) and the MQTT credentials.
#[derive(Debug, Clone, Default)]
pub struct MqttSecurity {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
}

impl MqttSecurity {
    /// Checks the settings and reads their files; an error names the key
    /// and the file.
    pub fn load(settings: &BrokerSecurity) -> Result<MqttSecurity, BrokerSecurityError> {
        let checked = settings.check()?;
        let tls = match checked.ca_file {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs("ca_file", ca)? {
                    roots.add(c).map_err(|e| {
                        BrokerSecurityError::file(
                            "ca_file",
                            ca,
                            format!("not a CA certificate: {e}"),
                        )
                    })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| BrokerSecurityError::new("tls", e.to_string()))?
                    .with_root_certificates(roots);
                let config = match checked.client {
                    None => builder.with_no_client_auth(),
                    Some((cert, key)) => {
                        let chain = read_certs("cert_file", cert)?;
                        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                            BrokerSecurityError::file(
                                "key_file",
                                key,
                                format!("no usable PEM private key: {e}"),
                            )
                        })?;
                        builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                            BrokerSecurityError::file(
                                "key_file",
                                key,
                                format!("does not fit {}: {e}", cert.display()),
                            )
                        })?
                    }
                };
                Some(Arc::new(config))
            }
        };
        let credentials = match checked.credentials {
            None => None,
            Some((user, file)) => {
                let pw = std::fs::read_to_string(file)
                    .map_err(|e| BrokerSecurityError::file("password_file", file, e.to_string()))?;
                let pw = pw.trim_end_matches(['\n', '\r']);
                if pw.is_empty() {
                    return Err(BrokerSecurityError::file("password_file", file, "is empty"));
                }
                Some((user.to_owned(), pw.to_owned()))
            }
        };
        Ok(MqttSecurity { tls, credentials })
    }

    /// Sets the TLS transport and the credentials on rumqttc options.
    pub fn apply(&self, opts: &mut MqttOptions) {
        if let Some(cfg) = &self.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg.clone()),
            ));
        }
        if let Some((u, p)) = &self.credentials {
            opts.set_credentials(u.clone(), p.clone());
        }
    }
}

/// All PEM certificates in `path` (at least one).
fn read_certs(
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, BrokerSecurityError> {
    let bad = |why: String| BrokerSecurityError::file(key, path, why);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}
