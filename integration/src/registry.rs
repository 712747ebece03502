//! A real docker-registry (CNCF distribution 2.8) on 127.0.0.1 for tests, and test images made
//! here and pushed through the registry's HTTP API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::cluster::free_port;
use crate::process::{ChildGuard, wait_until};

/// The docker-registry binary (Debian's package, or a `registry` from upstream).
pub fn registry_bin() -> anyhow::Result<PathBuf> {
    ["/usr/bin/docker-registry", "/usr/local/bin/registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("docker-registry is not installed: run scripts/setup.sh")
}

/// A registry config: filesystem storage under `root`, listening on `addr`, plus `extra` YAML
/// (auth, proxy, middleware) at the top level.
pub fn config(root: &Path, addr: &str, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n{extra}",
        root = root.display(),
    )
}

/// Stores `data` as a blob of repository `repo` in a registry's filesystem storage under `root`
/// (the layout docker-registry reads: the blob, and the repository's link to it), without a
/// push. Returns its digest.
pub fn store_blob(root: &Path, repo: &str, data: &[u8]) -> anyhow::Result<String> {
    let digest = crate::sha256(data);
    let hex = &digest["sha256:".len()..];
    let v2 = root.join("docker/registry/v2");
    let blob = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::create_dir_all(&blob)?;
    std::fs::write(blob.join("data"), data)?;
    let link = v2
        .join("repositories")
        .join(repo)
        .join("_layers/sha256")
        .join(hex);
    std::fs::create_dir_all(&link)?;
    std::fs::write(link.join("link"), &digest)?;
    Ok(digest)
}

/// Stores `image` in a registry's filesystem storage under `root` as `repo:tag`, without a push
/// (for large images in the lab). Returns the manifest's digest.
pub fn store_image(root: &Path, repo: &str, tag: &str, image: &Image) -> anyhow::Result<String> {
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        store_blob(root, repo, blob)?;
    }
    let digest = image.manifest_digest();
    let hex = &digest["sha256:".len()..];
    let v2 = root.join("docker/registry/v2");
    let blob = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::create_dir_all(&blob)?;
    std::fs::write(blob.join("data"), &image.manifest)?;
    let manifests = v2.join("repositories").join(repo).join("_manifests");
    for link in [
        manifests.join("revisions/sha256").join(hex),
        manifests.join("tags").join(tag).join("current"),
        manifests
            .join("tags")
            .join(tag)
            .join("index/sha256")
            .join(hex),
    ] {
        std::fs::create_dir_all(&link)?;
        std::fs::write(link.join("link"), &digest)?;
    }
    Ok(digest)
}

/// How the test registry lets clients in.
pub enum Access {
    Anonymous,
    /// HTTP Basic with one user (bcrypt in an htpasswd file, made with `htpasswd -B`).
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from a token server (see [`crate::token::TokenServer`]).
    Token {
        realm: String,
        bundle: PathBuf,
    },
}

/// A docker-registry process on 127.0.0.1.
pub struct TestRegistry {
    pub port: u16,
    pub root: PathBuf,
    tls: bool,
    _child: ChildGuard,
}

impl TestRegistry {
    /// Starts a plain-HTTP registry with its storage and config under `dir`.
    pub async fn start(dir: &Path, access: &Access) -> anyhow::Result<TestRegistry> {
        Self::start_with(dir, access, None, "").await
    }

    /// Starts a registry, serving HTTPS with `tls` = (certificate, key) PEM files when given,
    /// with `extra` top-level YAML (middleware, say).
    pub async fn start_with(
        dir: &Path,
        access: &Access,
        tls: Option<(&Path, &Path)>,
        extra: &str,
    ) -> anyhow::Result<TestRegistry> {
        std::fs::create_dir_all(dir)?;
        let root = dir.join("storage");
        std::fs::create_dir_all(&root)?;
        let mut yaml = match access {
            Access::Anonymous => String::new(),
            Access::Token { realm, bundle } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                crate::token::SERVICE,
                crate::token::ISSUER,
                bundle.display()
            ),
            Access::Basic { user, password } => {
                let out = std::process::Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("htpasswd (apache2-utils) is not installed: run scripts/setup.sh")?;
                if !out.status.success() {
                    bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let file = dir.join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    file.display()
                )
            }
        };
        let port = free_port();
        let path = dir.join("registry.yml");
        let mut config = config(&root, &format!("127.0.0.1:{port}"), "");
        if let Some((cert, key)) = tls {
            // Part of the `http` table `config` ends with.
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        yaml.insert_str(0, &config);
        yaml += extra;
        std::fs::write(&path, yaml)?;
        let mut cmd = std::process::Command::new(registry_bin()?);
        cmd.arg("serve")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?);
        let child = ChildGuard::spawn(cmd);
        wait_until(Duration::from_secs(20), "registry to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        Ok(TestRegistry {
            port,
            root,
            tls: tls.is_some(),
            _child: child,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

/// An OCI image: uncompressed tar layers (`application/vnd.oci.image.layer.v1.tar`), a config,
/// and the manifest naming them.
pub struct Image {
    pub layers: Vec<Bytes>,
    pub config: Bytes,
    pub manifest: Bytes,
}

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

impl Image {
    /// One layer per size, each a tar holding one file of that many random bytes.
    pub fn random(sizes: &[usize]) -> Image {
        let layers: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| tar_one_file(&format!("layer-{i}.bin"), &crate::random_bytes(n)))
            .collect();
        Image::of_layers(layers)
    }

    /// An image of these uncompressed tar layers (bottom first), for this machine's platform.
    pub fn of_layers(layers: Vec<Bytes>) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|l| crate::sha256(l)).collect();
        Image::made_of(layers, diff_ids, "application/vnd.oci.image.layer.v1.tar")
    }

    /// An image of these tar layers (bottom first), each gzipped, as most images are.
    pub fn of_gzip_layers(tars: Vec<Bytes>) -> Image {
        use std::io::Write as _;
        let diff_ids: Vec<String> = tars.iter().map(|l| crate::sha256(l)).collect();
        let layers = tars
            .iter()
            .map(|t| {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(t).expect("gzip in memory");
                Bytes::from(gz.finish().expect("gzip in memory"))
            })
            .collect();
        Image::made_of(
            layers,
            diff_ids,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    }

    /// An image of these layers as they are, with these diff ids, each layer said to be of
    /// `media_type` (a test may lie).
    pub fn made_of(layers: Vec<Bytes>, diff_ids: Vec<String>, media_type: &str) -> Image {
        Image::made_with(layers, diff_ids, media_type, serde_json::json!({}))
    }

    /// [`Image::made_of`] with the image config's `config` (entrypoint, user, env...).
    pub fn made_with(
        layers: Vec<Bytes>,
        diff_ids: Vec<String>,
        media_type: &str,
        runtime: serde_json::Value,
    ) -> Image {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = Bytes::from(config.to_string());
        let descriptor = |media: &str, data: &Bytes| serde_json::json!({"mediaType": media, "digest": crate::sha256(data), "size": data.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| descriptor(media_type, l)).collect::<Vec<_>>(),
        });
        Image {
            layers,
            config,
            manifest: Bytes::from(manifest.to_string()),
        }
    }

    pub fn manifest_digest(&self) -> String {
        crate::sha256(&self.manifest)
    }

    /// Pushes the blobs and the manifest (as `tag`) to `registry` (`http://host:port`) under
    /// `name`, sending `authorization` with every request when given.
    pub async fn push(
        &self,
        registry: &str,
        name: &str,
        tag: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<()> {
        shoal_p2p::install_crypto_provider();
        let client = reqwest::Client::builder().no_proxy().build()?;
        self.push_with(&client, registry, name, tag, authorization)
            .await
    }

    /// [`push`](Self::push) with the given client (one that trusts a test CA, say).
    pub async fn push_with(
        &self,
        client: &reqwest::Client,
        registry: &str,
        name: &str,
        tag: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<()> {
        let with_auth = |rb: reqwest::RequestBuilder| match authorization {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            let resp = with_auth(client.post(format!("{registry}/v2/{name}/blobs/uploads/")))
                .send()
                .await?;
            if resp.status() != reqwest::StatusCode::ACCEPTED {
                bail!("upload start: {}", resp.status());
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("upload without Location")?;
            let mut url = reqwest::Url::parse(registry)?.join(location)?;
            url.query_pairs_mut()
                .append_pair("digest", &crate::sha256(blob));
            let resp = with_auth(client.put(url))
                .header("content-type", "application/octet-stream")
                .body(blob.clone())
                .send()
                .await?;
            if resp.status() != reqwest::StatusCode::CREATED {
                bail!("blob upload: {}", resp.status());
            }
        }
        let resp = with_auth(client.put(format!("{registry}/v2/{name}/manifests/{tag}")))
            .header("content-type", MANIFEST_TYPE)
            .body(self.manifest.clone())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            bail!("manifest upload: {}", resp.status());
        }
        Ok(())
    }
}

/// Copies `/bin/cat` and the libraries it loads into `root` (at the same paths): a rootfs a
/// container can run `cat` in.
pub fn copy_cat(root: &Path) {
    let mut files = vec!["/bin/cat".to_owned()];
    let ldd = std::process::Command::new("ldd")
        .arg("/bin/cat")
        .output()
        .expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux….so.2 (0x…)`
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(path.to_owned());
        }
    }
    for file in &files {
        let to = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a file has a directory")).expect("mkdir");
        std::fs::copy(file, &to).expect("copy cat");
    }
}

/// A tar archive of the directory `dir` (its contents, not `dir` itself), as `tar` makes it:
/// owner root, names sorted, so the same files make the same layer.
pub fn tar_dir(dir: &Path) -> anyhow::Result<Bytes> {
    let out = std::process::Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout.into())
}

/// A tar archive (ustar) holding one regular file.
pub fn tar_one_file(name: &str, data: &[u8]) -> Bytes {
    assert!(name.len() < 100, "short names only");
    let mut header = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, value: &[u8]| {
        h[at..at + value.len()].copy_from_slice(value);
    };
    field(&mut header, 0, name.as_bytes());
    field(&mut header, 100, b"0000644\0");
    field(&mut header, 108, b"0000000\0");
    field(&mut header, 116, b"0000000\0");
    field(
        &mut header,
        124,
        format!("{:011o}\0", data.len()).as_bytes(),
    );
    field(&mut header, 136, b"14572426440\0"); // a fixed mtime: same bytes, same digest
    field(&mut header, 148, b"        ");
    header[156] = b'0';
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = Vec::with_capacity(512 + data.len() + 512 + 1024);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out.into()
}
