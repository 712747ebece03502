//! Shoal's test and benchmark harness.
//!
//! * [`origin::TestOrigin`]: an HTTP origin in-process (our own test double for "a static file
//!   server"), with switches for range support, throttling, redirects, and counters of bytes sent
//!   and headers seen, so tests can check what crossed the wire.
//! * [`process`]: the real `shoal` binary as a child process, killed by pid when dropped.
//! * [`cluster::Cluster`]: a scheduler, seed and daemons on 127.0.0.1.
//! * [`registry::TestRegistry`]: a real docker-registry, and test images pushed to it.
//! * [`lab::Lab`]: many hosts on one machine (network namespaces, shaped links), and the swarm
//!   benchmark run by the `lab` command.

pub mod browser;
pub mod cluster;
pub mod fakepeer;
pub mod lab;
pub mod nginx;
pub mod origin;
pub mod process;
pub mod registry;
pub mod runtimes;
pub mod tls;
pub mod token;

/// Random, incompressible bytes.
pub fn random_bytes(len: usize) -> bytes::Bytes {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v.into()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A size such as `256MiB`, `1GiB`, `64KiB` or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        u => return Err(format!("unknown unit {u:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes `size` random bytes to `path`, a MiB at a time.
pub fn write_random(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::rng().fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}
