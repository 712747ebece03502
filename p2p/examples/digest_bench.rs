//! Which piece digest to use: SHA-256 or BLAKE3, single-threaded, on this machine.
//!
//! `cargo run --release -p shoal-p2p --example digest_bench [MiB]` hashes a buffer in 4 MiB pieces
//! (the common piece length) and prints GB/s for each algorithm. Results go to
//! `integration/BENCHMARKS.md`; the choice lives in `Algorithm::PIECE`.

use std::time::Instant;

use shoal_p2p::{Algorithm, Digest};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    println!("{mib} MiB in 4 MiB pieces, one thread");
    for algo in [Algorithm::Sha256, Algorithm::Blake3] {
        // One warm-up pass, then the best of three.
        let mut best = f64::MAX;
        for _ in 0..4 {
            let start = Instant::now();
            let mut sink = 0u8;
            for piece in data.chunks(4 << 20) {
                sink ^= Digest::of(algo, piece).bytes()[0];
            }
            std::hint::black_box(sink);
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{:<8} {:>6.2} GB/s",
            algo.name(),
            data.len() as f64 / best / 1e9
        );
    }
}
