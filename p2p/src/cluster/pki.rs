//! Making a cluster's credentials: a CA (`shoal ca init`), member certificates signed by it
//! (`shoal ca issue`), and `shoal up`'s own cluster of one ([`provision`]). Private keys are
//! written mode 0600 and never replaced silently.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{Member, Paths};

/// How long a CA this makes is valid.
pub const CA_DAYS: u32 = 3650;
/// How long a member certificate is valid unless told otherwise.
pub const MEMBER_DAYS: u32 = 365;
/// `shoal up` issues itself a new certificate when its own expires within this long.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

fn invalid(path: &Path, detail: impl ToString) -> PkiError {
    PkiError::Invalid {
        path: path.into(),
        detail: detail.to_string(),
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        what: "read",
        path: path.into(),
        source,
    })
}

/// The host's name, for the common names of CAs and the default host id.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Makes a CA at `cert` / `key` unless both exist (one without the other is an error).
/// Returns whether it made one. The key is ECDSA P-256, mode 0600; the certificate may sign
/// certificates and nothing else.
pub fn create_ca(cert: &Path, key: &Path, common_name: &str) -> Result<bool, PkiError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (present, _) => {
            let (absent, present) = if present { (key, cert) } else { (cert, key) };
            return Err(invalid(
                absent,
                format!(
                    "missing, but {} exists: give both files or neither",
                    present.display()
                ),
            ));
        }
    }
    let err = |e: rcgen::Error| invalid(cert, e);
    let key_pair = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Shoal");
    validity(&mut params, CA_DAYS);
    let ca = params.self_signed(&key_pair).map_err(err)?;
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, ca.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// A member certificate and its key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a certificate for `member` with the CA at `ca_cert` / `ca_key`, valid `days`.
pub fn issue(
    ca_cert: &Path,
    ca_key: &Path,
    member: &Member,
    days: u32,
) -> Result<Issued, PkiError> {
    let ca_key_pair = KeyPair::from_pem(&read(ca_key)?).map_err(|e| invalid(ca_key, e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(ca_cert)?, ca_key_pair).map_err(|e| invalid(ca_cert, e))?;
    if member.id.is_empty() || member.id.len() > 256 {
        return Err(invalid(ca_cert, "a host id is 1 to 256 characters"));
    }
    let names: Vec<String> = member.roles.iter().map(|r| r.dns_name()).collect();
    let err = |e: rcgen::Error| invalid(ca_cert, format!("certificate for {member}: {e}"));
    let mut params = CertificateParams::new(names).map_err(err)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, member.id.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Shoal");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes what a member needs into `out`: `ca.crt` (a copy of `ca_cert`), `host.crt` and
/// `host.key` (0600), replacing the member's earlier certificate and key.
pub fn write_member(out: &Path, ca_cert: &Path, issued: &Issued) -> Result<Paths, PkiError> {
    let paths = Paths::in_dir(out);
    let ca = read(ca_cert)?;
    if paths.ca_cert != ca_cert {
        replace(&paths.ca_cert, ca.as_bytes(), 0o644)?;
    }
    replace(&paths.key, issued.key_pem.as_bytes(), 0o600)?;
    replace(&paths.cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok(paths)
}

/// `shoal up`'s cluster of one, in `dir`: a CA (`ca.crt`, `ca.key`) made at the first start,
/// and this host's certificate as `member`, issued again when missing, for another member, or
/// expiring within 30 days. Returns the credential paths and whether it issued.
pub fn provision(dir: &Path, member: &Member) -> Result<(Paths, bool), PkiError> {
    let paths = Paths::in_dir(dir);
    let ca_key = dir.join("ca.key");
    create_ca(
        &paths.ca_cert,
        &ca_key,
        &format!("Shoal cluster CA {}", hostname()),
    )?;
    let current = fs::read(&paths.cert).ok().and_then(|pem| {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).ok()?;
        let der: rustls::pki_types::CertificateDer = der;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let expires = cert.validity().not_after.timestamp();
        let renew_at = SystemTime::now() + RENEW_BEFORE;
        let renew_at = renew_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let fresh = i64::try_from(renew_at).is_ok_and(|r| expires > r);
        Some((Member::from_cert(&der).ok()?, fresh))
    });
    if matches!(&current, Some((m, true)) if m == member) && paths.key.exists() {
        return Ok((paths, false));
    }
    let issued = issue(&paths.ca_cert, &ca_key, member, MEMBER_DAYS)?;
    Ok((write_member(dir, &paths.ca_cert, &issued)?, true))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now();
    // An hour back, for clocks a little behind this one.
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86400)).into();
}

/// Creates `path` (and its directory) with `mode`; an existing file is an error.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    write(path, data, mode, false)
}

/// Writes `path` whole with `mode`, replacing it atomically when it exists.
fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    write(path, data, mode, true)
}

fn write(path: &Path, data: &[u8], mode: u32, replace: bool) -> Result<(), PkiError> {
    let io = |what, source| PkiError::Io {
        what,
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io("create directory for", e))?;
    }
    let target = if replace {
        path.with_extension("new")
    } else {
        path.to_owned()
    };
    if replace {
        let _ = fs::remove_file(&target);
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| io("create", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    if replace {
        fs::rename(&target, path).map_err(|e| io("replace", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, Role};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cluster_of_one_is_made_once_and_renewed_for_another_member() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let me = Member::new("host-a", [Role::Seed, Role::Scheduler]);
        let (paths, issued) = provision(dir.path(), &me).unwrap();
        assert!(issued);
        let mode = fs::metadata(&paths.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let cluster = Cluster::load(&paths).unwrap();
        assert_eq!(cluster.me(), &me);
        assert!(me.is(Role::Node), "a seed is a node");
        let (_, again) = provision(dir.path(), &me).unwrap();
        assert!(!again, "a fresh certificate for the same member is kept");
        let other = Member::new("host-b", [Role::Node]);
        let (paths, again) = provision(dir.path(), &other).unwrap();
        assert!(again);
        assert_eq!(Cluster::load(&paths).unwrap().me(), &other);
    }

    #[test]
    fn a_certificate_from_another_ca_or_without_a_role_is_refused() {
        crate::install_crypto_provider();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let me = Member::new("h", [Role::Node]);
        let (paths_a, _) = provision(a.path(), &me).unwrap();
        provision(b.path(), &me).unwrap();
        let mixed = Paths {
            ca_cert: b.path().join("ca.crt"),
            ..paths_a.clone()
        };
        let e = Cluster::load(&mixed).unwrap_err().to_string();
        assert!(e.contains("not a certificate of this cluster"), "{e}");
        let no_role = Member {
            id: "h".into(),
            roles: vec![],
        };
        let issued = issue(&paths_a.ca_cert, &a.path().join("ca.key"), &no_role, 1).unwrap();
        let out = tempfile::tempdir().unwrap();
        let paths = write_member(out.path(), &paths_a.ca_cert, &issued).unwrap();
        let e = Cluster::load(&paths).unwrap_err().to_string();
        assert!(e.contains("names no role"), "{e}");
        assert!(create_ca(&paths_a.ca_cert, &out.path().join("nokey"), "x").is_err());
    }
}
