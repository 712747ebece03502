//! Cluster identity: the members of a cluster (schedulers, seeds, nodes) prove membership to one
//! another with mutual TLS, from certificates one cluster CA signed.
//!
//! A member's certificate says who it is: its subject's common name is the host id, and its DNS
//! names say its roles, `node.shoal.internal`, `seed.shoal.internal` (a seed is a node too) and
//! `scheduler.shoal.internal`. A server asks every client for a certificate of the cluster; a
//! client checks that the server's certificate names the role it dials (a node dialing a
//! scheduler accepts only a scheduler's certificate), whatever address it dialed. So the
//! identity the scheduler acts on comes from the handshake, never from a message.
//! [`pki`] makes the CA and the certificates (`shoal ca`, and `shoal up` for itself).
//!
//! TLS 1.3 with AES-128-GCM first (ring uses AES-NI and CLMUL where the CPU has them).

pub mod pki;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;
use tokio::net::TcpStream;

/// The DNS suffix of role names in member certificates.
pub const DOMAIN: &str = "shoal.internal";
/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Serves pieces and downloads (every daemon).
    Node,
    /// Takes seed jobs (with the registry credentials they carry).
    Seed,
    /// Coordinates the swarm.
    Scheduler,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Node, Role::Seed, Role::Scheduler];

    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Seed => "seed",
            Role::Scheduler => "scheduler",
        }
    }

    /// The DNS name a certificate carries for this role.
    pub fn dns_name(self) -> String {
        format!("{}.{DOMAIN}", self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?} (node, seed or scheduler)"))
    }
}

/// A cluster member as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Sorted, without repeats; a seed is always a node too.
    pub roles: Vec<Role>,
}

impl Member {
    pub fn new(id: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Member {
        let mut roles: Vec<Role> = roles.into_iter().collect();
        if roles.contains(&Role::Seed) {
            roles.push(Role::Node);
        }
        roles.sort();
        roles.dedup();
        Member {
            id: id.into(),
            roles,
        }
    }

    pub fn is(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Reads the member a certificate names (whether a trusted CA signed it is the TLS
    /// handshake's business).
    pub fn from_cert(der: &[u8]) -> Result<Member, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .ok_or("the certificate's subject has no common name (the host id)")?
            .to_owned();
        let mut roles = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    roles.extend(Role::ALL.into_iter().filter(|r| r.dns_name() == *dns));
                }
            }
        }
        if roles.is_empty() {
            return Err(format!(
                "certificate of {id:?} names no role (a DNS name such as node.{DOMAIN})"
            ));
        }
        Ok(Member::new(id, roles))
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<&str> = self.roles.iter().map(|r| r.name()).collect();
        write!(f, "{} ({})", self.id, roles.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error(
        "no cluster credentials for this {what}: {missing} is missing. Give it a certificate \
         from the cluster CA (`shoal ca issue`, see the README), or set `insecure = true` in \
         the config's [cluster] table to run without (anyone who can reach the ports is then \
         trusted)"
    )]
    Missing {
        what: &'static str,
        missing: PathBuf,
    },
}

/// The `[cluster]` table of the daemon's and the scheduler's configs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Holds `ca.crt`, `host.crt` and `host.key`, as `shoal ca issue --out` writes them
    /// (default: `cluster/` in the data directory).
    pub dir: Option<PathBuf>,
    /// The cluster CA's certificate, if not `<dir>/ca.crt`.
    pub ca_cert: Option<PathBuf>,
    /// This host's certificate (chain), if not `<dir>/host.crt`.
    pub cert: Option<PathBuf>,
    /// Its private key, if not `<dir>/host.key`.
    pub key: Option<PathBuf>,
    /// Plaintext, and trust whoever connects: for a network where only members can reach the
    /// ports. Logged loudly at every start.
    pub insecure: bool,
}

/// Where a host's cluster credentials are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Paths {
    /// The files `shoal ca issue --out <dir>` writes.
    pub fn in_dir(dir: &Path) -> Paths {
        Paths {
            ca_cert: dir.join("ca.crt"),
            cert: dir.join("host.crt"),
            key: dir.join("host.key"),
        }
    }
}

impl ClusterConfig {
    /// The credential files, `default_dir` standing for an unset `dir`.
    pub fn paths(&self, default_dir: &Path) -> Paths {
        let dir = Paths::in_dir(self.dir.as_deref().unwrap_or(default_dir));
        Paths {
            ca_cert: self.ca_cert.clone().unwrap_or(dir.ca_cert),
            cert: self.cert.clone().unwrap_or(dir.cert),
            key: self.key.clone().unwrap_or(dir.key),
        }
    }

    /// This host's cluster identity; `None` when the config says `insecure` (and says so in
    /// the log). Missing files are an error that says what to do: a member without
    /// credentials does not start.
    pub fn load(
        &self,
        default_dir: &Path,
        what: &'static str,
    ) -> Result<Option<Arc<Cluster>>, ClusterError> {
        if self.insecure {
            tracing::warn!(
                "INSECURE: cluster TLS is off ([cluster] insecure = true): this {what} trusts \
                 whoever connects, and sends pieces and seed jobs (registry credentials \
                 included) in plaintext"
            );
            return Ok(None);
        }
        let paths = self.paths(default_dir);
        for p in [&paths.ca_cert, &paths.cert, &paths.key] {
            if !p.exists() {
                return Err(ClusterError::Missing {
                    what,
                    missing: p.clone(),
                });
            }
        }
        Cluster::load(&paths).map(|c| Some(Arc::new(c)))
    }
}

/// This host's cluster identity: its member certificate and key, and the cluster CA.
pub struct Cluster {
    me: Member,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    pub fn load(paths: &Paths) -> Result<Cluster, ClusterError> {
        let invalid = |path: &Path, detail: String| ClusterError::Invalid {
            path: path.into(),
            detail,
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ClusterError::Read {
                path: path.into(),
                source,
            })
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, ClusterError> {
            let pem = read(path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
            if certs.is_empty() {
                return Err(invalid(path, "no certificate in it".into()));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs(&paths.ca_cert)? {
            roots
                .add(ca)
                .map_err(|e| invalid(&paths.ca_cert, e.to_string()))?;
        }
        let chain = certs(&paths.cert)?;
        let me = Member::from_cert(&chain[0]).map_err(|e| invalid(&paths.cert, e))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&paths.key)?)
            .map_err(|e| invalid(&paths.key, format!("no private key in it: {e}")))?;
        let cluster = Cluster {
            me,
            roots: Arc::new(roots),
            chain,
            key,
            provider: Arc::new(provider()),
        };
        // A certificate the CA did not sign, or that does not match its key, fails here at
        // start rather than at every handshake.
        WebPkiServerVerifier::builder_with_provider(
            cluster.roots.clone(),
            cluster.provider.clone(),
        )
        .build()
        .map_err(|e| invalid(&paths.ca_cert, e.to_string()))?
        .verify_server_cert(
            &cluster.chain[0],
            &cluster.chain[1..],
            &role_name(cluster.me.roles[0]),
            &[],
            UnixTime::now(),
        )
        .map_err(|e| {
            invalid(
                &paths.cert,
                format!("not a certificate of this cluster: {e}"),
            )
        })?;
        cluster
            .server_config(Vec::new())
            .map_err(|e| invalid(&paths.key, e))?;
        Ok(cluster)
    }

    /// Who this host is in the cluster.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// A server config that asks every client for a certificate of the cluster.
    pub fn server_config(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerConfig>, String> {
        let clients =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// A client config that presents this host's certificate and accepts only a server whose
    /// certificate is the cluster's and names `role`.
    pub fn client_config(&self, role: Role, alpn: Vec<Vec<u8>>) -> ClientConfig {
        let verifier = RoleVerifier {
            inner: WebPkiServerVerifier::builder_with_provider(
                self.roots.clone(),
                self.provider.clone(),
            )
            .build()
            .expect("the roots were checked at load"),
            name: role_name(role),
        };
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .expect("the key was checked at load");
        config.alpn_protocols = alpn;
        config
    }

    /// A TLS client connection to the member at the end of `tcp`, which must hold `role`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        config: Arc<ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(config);
        // The name is only sent (SNI); the verifier checks the role's name whatever it is.
        let name = ServerName::try_from(DOMAIN).expect("a valid DNS name");
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Accepts a member's TLS connection and says who the member is.
pub async fn accept<T>(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: T,
) -> io::Result<(tokio_rustls::server::TlsStream<T>, Member)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let member = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate"))
        .and_then(|c| {
            Member::from_cert(c).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))
        })?;
    Ok((tls, member))
}

fn role_name(role: Role) -> ServerName<'static> {
    ServerName::try_from(role.dns_name()).expect("role names are valid DNS names")
}

/// ring's provider with AES-128-GCM first: the cheapest suite with AES-NI, as strong as
/// needed.
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    }
}

/// Checks the server's certificate against the cluster CA and the role's name, not the
/// address dialed: members are dialed by IP address, and what matters is their role.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialed: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
