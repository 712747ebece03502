//! The registry mirror (port 4001 of every daemon) with real clients: a real docker-registry
//! upstream (plain, htpasswd, token auth, TLS, storage redirects), containerd 1.6 through
//! `ctr --hosts-dir`, dockerd 20.10, skopeo, and HTTP requests for the distribution-spec's pull
//! assertions. This file holds what the modules share.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use reqwest::StatusCode;
use shoal_integration::cluster::Cluster;
use shoal_integration::origin::TestOrigin;
use shoal_integration::registry::{Access, Image, TestRegistry};
use shoal_integration::runtimes::{Containerd, Dockerd, hosts_toml};
use shoal_integration::tls::TestCa;
use shoal_integration::token::TokenServer;

const MIB: usize = 1 << 20;
/// The registry as images name it; the mirror maps it to the test registry.
const REGISTRY: &str = "upstream.invalid:5000";
const NS: &str = "ns=upstream.invalid%3A5000";

fn client() -> reqwest::Client {
    shoal_p2p::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn origin_bytes(cluster: &Cluster) -> u64 {
    let mut total = 0;
    for node in cluster.seed.iter().chain(&cluster.daemons) {
        total += node
            .metric("shoal_download_bytes_total{source=\"origin\"}")
            .await;
    }
    total
}

mod auth;
mod hijack;
mod http;
mod runtimes;

/// What became of the mirror's requests, by kind (`blob`, `pass`, `tunnel`, `hijack`).
async fn requests(node: &shoal_integration::cluster::Node, kind: &str) -> u64 {
    node.metric(&format!("shoal_proxy_requests_total{{kind=\"{kind}\"}}"))
        .await
}

/// Fails the test with the program's stderr unless it exited 0.
fn succeeded(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A random password, new in every test.
fn secret() -> String {
    format!("pw-{}", hex::encode(shoal_integration::random_bytes(8)))
}

/// A registry (in `dir/registry`) holding a random image with layers of `sizes` as `name:v1`,
/// pushed with `authorization`.
async fn registry_with_image(
    dir: &Path,
    access: &Access,
    name: &str,
    sizes: &[usize],
    authorization: Option<&str>,
) -> (TestRegistry, Image) {
    let registry = TestRegistry::start(&dir.join("registry"), access)
        .await
        .unwrap();
    let image = Image::random(sizes);
    image
        .push(&registry.url(), name, "v1", authorization)
        .await
        .unwrap();
    (registry, image)
}

/// `n` daemons (and a seed) whose mirrors send requests for [`REGISTRY`] to `registry`.
async fn mirrors_of(registry: &TestRegistry, n: usize) -> Cluster {
    Cluster::builder()
        .daemons(n)
        .registry(REGISTRY, &registry.url())
        .start()
        .await
}

/// A containerd (in `dir/ctd-<name>`) whose `ctr` pulls `registry` (a `hosts.toml` directory
/// name, or `_default`) through `mirror`; and that hosts directory.
async fn containerd_via(
    dir: &Path,
    name: &str,
    registry: &str,
    mirror: &str,
) -> (Containerd, PathBuf) {
    let ctd = Containerd::start(&dir.join(format!("ctd-{name}"))).await;
    let hosts = dir.join(format!("hosts-{name}"));
    hosts_toml(&hosts, registry, None, mirror);
    (ctd, hosts)
}

/// `ctr images pull` through `hosts`; the image must be pulled and unpacked.
async fn ctr_pull(ctd: &Containerd, hosts: &Path, reference: &str, extra: &[&str]) {
    let hosts = hosts.to_string_lossy();
    let mut args = vec!["images", "pull", "--hosts-dir", &hosts];
    args.extend_from_slice(extra);
    args.push(reference);
    let out = ctd.run(&args).await;
    assert!(
        out.status.success(),
        "ctr pull failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unpacking"),
        "not unpacked"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
