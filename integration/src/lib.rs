//! Shoal's test and benchmark harness.
//!
//! * [`origin::TestOrigin`]: an HTTP origin in-process (our own test double for "a static file
//!   server"), with switches for range support, throttling, redirects, and counters of bytes sent
//!   and headers seen, so tests can check what crossed the wire.
//! * [`process`]: the real `shoal` binary as a child process, killed by pid when dropped.

pub mod cluster;
pub mod fakepeer;
pub mod nginx;
pub mod origin;
pub mod process;

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
