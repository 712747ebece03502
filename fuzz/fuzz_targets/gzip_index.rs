//! Lazy pulling's gzip index: index bytes from peers, and gzip streams indexed as they arrive
//! (a layer is whatever the registry or a peer sends until its digest is checked), read back
//! from the checkpoints they gave.
#![no_main]

use shoal_seed::gzindex::{Index, IndexBuilder, read_at};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Index::from_bytes(data);
    let mut builder = IndexBuilder::new(1024);
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = Vec::new();
    let built = builder
        .write(a, &mut |o| out.extend_from_slice(o))
        .and_then(|()| builder.write(b, &mut |o| out.extend_from_slice(o)))
        .and_then(|()| builder.finish());
    if let Ok(index) = built {
        assert_eq!(index.uncompressed_size, out.len() as u64);
        for (i, c) in index.checkpoints.iter().enumerate() {
            let end = index.checkpoints.get(i + 1).map_or(out.len() as u64, |n| n.uncompressed);
            let Some(len) = end.checked_sub(c.uncompressed).filter(|&l| l > 0) else {
                continue;
            };
            let got = read_at(c, &data[c.compressed as usize..], c.uncompressed, len as usize)
                .expect("a checkpoint the builder made reads back");
            assert!(got == out[c.uncompressed as usize..end as usize]);
        }
        assert_eq!(Index::from_bytes(&index.to_bytes()).ok(), Some(index));
    }
});
