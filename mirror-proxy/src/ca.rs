//! Shoal's certificate authority for HTTPS hijack: a CA (made here, or the user's own) signs a
//! leaf certificate per hijacked host, minted on first use and kept in memory.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_p2p::cluster::pki;

/// Leaf configs kept at most; the cache starts over when full.
const MAX_LEAVES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("certificate for {host:?}: {detail}")]
    Leaf { host: String, detail: String },
    #[error(transparent)]
    Make(#[from] pki::PkiError),
}

/// The CA and the leaf certificates it signed.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl Ca {
    /// Loads the CA at `cert` / `key` (PEM), creating both first when neither exists.
    /// Returns whether it was created.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<(Ca, bool), CaError> {
        let name = format!("Shoal CA {}", pki::hostname());
        let created = pki::create_ca(cert, key, &name)?;
        Ok((Ca::load(cert, key)?, created))
    }

    /// Loads an existing CA.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CaError> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| CaError::Io {
                what: "read",
                path: p.into(),
                source,
            })
        };
        let invalid = |p: &Path, e: rcgen::Error| CaError::Invalid {
            path: p.into(),
            detail: e.to_string(),
        };
        let key_pair = KeyPair::from_pem(&read(key)?).map_err(|e| invalid(key, e))?;
        let cert_pem = read(cert)?;
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Invalid {
                path: cert.into(),
                detail: format!("no PEM certificate in it: {e}"),
            })?;
        let issuer = Issuer::from_ca_cert_der(&der, key_pair).map_err(|e| invalid(cert, e))?;
        Ok(Ca {
            issuer,
            cert_der: der,
            leaves: Mutex::default(),
        })
    }

    /// A TLS server config presenting a certificate for `host` (a DNS name or an IP address),
    /// offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(c) = self.leaves().get(host) {
            return Ok(c.clone());
        }
        let leaf_err = |detail: String| CaError::Leaf {
            host: host.to_string(),
            detail,
        };
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(|e| leaf_err(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| leaf_err(e.to_string()))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| leaf_err(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key_der)
            .map_err(|e| leaf_err(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.leaves();
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), config.clone());
        Ok(config)
    }

    fn leaves(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServerConfig>>> {
        self.leaves.lock().expect("leaf cache lock")
    }
}

/// What `shoal ca` prints: where the CA is, and how clients of the hijack come to trust it.
pub fn trust_instructions(cert: &Path, key: &Path, created: bool) -> String {
    let cert = cert.display();
    format!(
        "{} CA certificate: {cert}\n\
         Clients of the HTTPS hijack (proxy.hijack.hosts) must trust it:\n\
         \x20 Docker, per registry:  mkdir -p /etc/docker/certs.d/<registry>[:port] && \
         cp {cert} /etc/docker/certs.d/<registry>[:port]/ca.crt\n\
         \x20 the system store:      cp {cert} /usr/local/share/ca-certificates/shoal.crt && \
         update-ca-certificates\n\
         and reach the registry through the proxy: HTTPS_PROXY=http://127.0.0.1:4001 (dockerd: a \
         systemd drop-in).\n\
         The key ({}) stays on this host, readable only by its owner.",
        if created { "Created the" } else { "The" },
        key.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_loads_and_signs() {
        shoal_p2p::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let (ca, created) = Ca::load_or_create(&cert, &key).unwrap();
        assert!(created);
        let mode = fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let a = ca.server_config("registry.example").unwrap();
        let b = ca.server_config("registry.example").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "leaves are cached");
        ca.server_config("127.0.0.1").unwrap();
        ca.server_config("[::1]").unwrap();
        let (_, created) = Ca::load_or_create(&cert, &key).unwrap();
        assert!(!created, "an existing CA is kept");
        fs::remove_file(&key).unwrap();
        let e = Ca::load_or_create(&cert, &key).err().unwrap().to_string();
        assert!(e.contains("neither"), "{e}");
    }
}
