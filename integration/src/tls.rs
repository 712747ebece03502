//! A test CA and server certificates for TLS registries in tests.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA that signs server certificates, its certificate in a PEM file.
pub struct TestCa {
    pub cert: PathBuf,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA, its certificate written to `dir/test-ca.crt`.
    pub fn new(dir: &Path) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "shoal test CA");
        let cert = params.self_signed(&key)?;
        let path = dir.join("test-ca.crt");
        std::fs::write(&path, cert.pem())?;
        Ok(TestCa {
            cert: path,
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP addresses): `(cert, key)` PEM files
    /// in `dir`.
    pub fn server(&self, dir: &Path, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}
