//! `bench-gzindex`: what lazy pulling's gzip index costs, on this machine's CPU. A layer-like
//! gzip stream (random stretches, repeats of earlier bytes and zeros; gzip's default level) is
//! inflated whole by flate2 (what the eager unpack uses) and by the index builder (a checkpoint
//! every `--span` of output), side by side; then random reads are served from their compressed
//! spans alone, as a lazy mount serves a cold read. A benchmark, not a test: it checks only that
//! both inflate to the same bytes.
//!
//! `cargo run --release -p shoal-integration --bin bench-gzindex -- --size 256MiB --runs 3`

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::ensure;
use clap::Parser;
use shoal_integration::{median, parse_size};
use shoal_seed::gzindex::{IndexBuilder, read_at};

#[derive(Parser)]
struct Args {
    /// Uncompressed size, e.g. 256MiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    size: u64,
    /// Output between checkpoints.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    span: u64,
    /// Bytes per random read.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    read: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Random stretches, repeats and zeros: compresses about as a binary layer does.
fn layer_like(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (next() % 60_000) as usize + 1;
        match next() % 3 {
            0 => v.extend((0..n).map(|_| next() as u8)),
            1 if v.len() > 40_000 => {
                let from = v.len() - 1 - (next() % 30_000) as usize;
                for i in 0..n {
                    v.push(v[from + i % 2000]);
                }
            }
            _ => v.extend(std::iter::repeat_n(0, n)),
        }
    }
    v.truncate(len);
    v
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = layer_like(usize::try_from(args.size)?);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&data)?;
    let gz = e.finish()?;
    let mb = data.len() as f64 / 1e6;
    println!(
        "{} bytes, {} gzip ({:.0} %)",
        data.len(),
        gz.len(),
        gz.len() as f64 * 100.0 / data.len() as f64
    );
    let (mut plain, mut indexed, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    let mut index = None;
    for run in 0..args.runs {
        // Both only count what they inflate (into a buffer they reuse): no fresh memory.
        let started = Instant::now();
        let (mut inflate, mut buf, mut n) = (
            flate2::read::MultiGzDecoder::new(gz.as_slice()),
            vec![0u8; 64 << 10],
            0usize,
        );
        loop {
            match inflate.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
        }
        plain.push(started.elapsed().as_secs_f64());
        ensure!(n == data.len(), "flate2 inflated {n} bytes");

        let started = Instant::now();
        let mut builder = IndexBuilder::new(args.span);
        let mut n = 0usize;
        for chunk in gz.chunks(64 << 10) {
            builder.write(chunk, &mut |o| n += o.len())?;
        }
        let built = builder.finish()?;
        indexed.push(started.elapsed().as_secs_f64());
        ensure!(n == data.len(), "the builder inflated {n} bytes");
        if run == 0 {
            let mut out = Vec::with_capacity(data.len());
            let mut again = IndexBuilder::new(args.span);
            for chunk in gz.chunks(64 << 10) {
                again.write(chunk, &mut |o| out.extend_from_slice(o))?;
            }
            ensure!(out == data, "the builder inflated other bytes");
        }

        let mut x = 0x9e37_79b9_u64 + run as u64;
        let mut latencies = Vec::new();
        for _ in 0..200 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let start = (x >> 16) % (args.size - args.read);
            let started = Instant::now();
            let (cp, span) = built
                .span(start..start + args.read)
                .ok_or_else(|| anyhow::anyhow!("no span"))?;
            let got = read_at(
                &built.checkpoints[cp],
                &gz[span.start as usize..span.end as usize],
                start,
                args.read as usize,
            )?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            ensure!(got[..] == data[start as usize..(start + args.read) as usize]);
        }
        reads.push(median(latencies));
        index = Some(built);
    }
    let index = index.ok_or_else(|| anyhow::anyhow!("no run"))?;
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        format!("{lo:.3}–{hi:.3}")
    };
    let (p, i) = (median(plain.clone()), median(indexed.clone()));
    println!(
        "inflate whole, flate2            {p:.3} s ({}) {:.0} MB/s",
        spread(&plain),
        mb / p
    );
    println!(
        "inflate whole, building the index {i:.3} s ({}) {:.0} MB/s  {:.2}x flate2's time",
        spread(&indexed),
        mb / i,
        i / p
    );
    println!(
        "index: {} checkpoints, {} bytes ({:.2} % of the gzip)",
        index.checkpoints.len(),
        index.to_bytes().len(),
        index.to_bytes().len() as f64 * 100.0 / gz.len() as f64
    );
    println!(
        "a cold {}-byte read from its span alone: median {:.2} ms (runs' medians {})",
        args.read,
        median(reads.clone()),
        spread(&reads)
    );
    Ok(())
}
