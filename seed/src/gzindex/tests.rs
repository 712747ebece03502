use std::io::Write as _;

use proptest::prelude::*;

use super::*;

/// Bytes that compress into many blocks with matches reaching far back: random runs, repeats
/// of earlier stretches, and zeros.
fn layer_like(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (next() % 20_000) as usize + 1;
        match next() % 3 {
            0 => v.extend((0..n).map(|_| next() as u8)),
            1 if v.len() > 40_000 => {
                let from = v.len() - 1 - (next() % 30_000) as usize;
                for i in 0..n {
                    v.push(v[from + i % 1000]);
                }
            }
            _ => v.extend(std::iter::repeat_n(0, n)),
        }
    }
    v.truncate(len);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The index of `gz` fed in pieces of `piece` bytes, and the output.
fn build(gz: &[u8], span: u64, piece: usize) -> Result<(Index, Vec<u8>), GzError> {
    let mut b = IndexBuilder::new(span);
    let mut out = Vec::new();
    for chunk in gz.chunks(piece.max(1)) {
        b.write(chunk, &mut |o| out.extend_from_slice(o))?;
    }
    Ok((b.finish()?, out))
}

fn read(index: &Index, gz: &[u8], range: Range<u64>) -> Vec<u8> {
    let (cp, span) = index.span(range.clone()).unwrap();
    let fetched = &gz[span.start as usize..span.end as usize];
    let len = (range.end - range.start) as usize;
    read_at(&index.checkpoints[cp], fetched, range.start, len).unwrap()
}

#[test]
fn any_range_reads_from_its_checkpoint_alone() {
    let data = layer_like(7, 3 << 20);
    let gz = gzip(&data);
    let (index, out) = build(&gz, 64 << 10, 7_919).unwrap();
    assert!(out == data, "the builder passes the output on");
    assert_eq!(index.uncompressed_size, data.len() as u64);
    assert_eq!(index.compressed_size, gz.len() as u64);
    assert!(index.checkpoints.len() > 10, "{}", index.checkpoints.len());
    assert!(index.checkpoints.iter().any(|c| c.bits != 0));
    for c in &index.checkpoints[1..] {
        assert_eq!(c.window.len(), WINDOW);
    }
    let again = Index::from_bytes(&index.to_bytes()).unwrap();
    assert_eq!(again, index);
    let mut x = 1u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (x >> 20) % data.len() as u64;
        let len = ((x >> 8) % 300_000).min(data.len() as u64 - start).max(1);
        let range = start..start + len;
        assert!(
            read(&again, &gz, range.clone()) == data[start as usize..(start + len) as usize],
            "{range:?}"
        );
    }
    // The last byte, and a range that spans checkpoints.
    let n = data.len() as u64;
    assert_eq!(read(&index, &gz, n - 1..n), [data[data.len() - 1]]);
    assert!(read(&index, &gz, 10..n - 10) == data[10..data.len() - 10]);
    assert!(index.span(n..n + 1).is_none() && index.span(5..5).is_none());
}

#[test]
fn members_follow_one_another() {
    let (a, b) = (layer_like(1, 400_000), layer_like(2, 300_000));
    let mut gz = gzip(&a);
    let mut named = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("made by a test")
        .extra(vec![1, 2, 3])
        .write(Vec::new(), flate2::Compression::fast());
    named.write_all(&b).unwrap();
    gz.extend(named.finish().unwrap());
    let (index, out) = build(&gz, 100_000, 4096).unwrap();
    let whole = [a.as_slice(), b.as_slice()].concat();
    assert!(out == whole);
    let second = index
        .checkpoints
        .iter()
        .find(|c| c.uncompressed == a.len() as u64)
        .expect("a checkpoint where the second member starts");
    assert!(second.window.is_empty());
    let across = a.len() as u64 - 5_000..a.len() as u64 + 5_000;
    assert!(read(&index, &gz, across.clone()) == whole[across.start as usize..across.end as usize]);
}

#[test]
fn broken_streams_are_refused() {
    let data = layer_like(3, 200_000);
    let gz = gzip(&data);
    let cut = &gz[..gz.len() - 3];
    assert!(build(cut, 1 << 20, 1000).is_err(), "cut short");
    let mut crc = gz.clone();
    let at = crc.len() - 6;
    crc[at] ^= 1;
    assert!(build(&crc, 1 << 20, 1000).is_err(), "wrong CRC-32");
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"junk");
    assert!(
        build(&trailing, 1 << 20, 1000).is_err(),
        "bytes after the last member"
    );
    assert!(build(b"", 1 << 20, 1).is_err(), "nothing");
    assert!(build(b"PK\x03\x04", 1 << 20, 1).is_err(), "not gzip");
    let mut huge_name = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3];
    huge_name.extend(std::iter::repeat_n(b'a', 70_000));
    assert!(
        build(&huge_name, 1 << 20, 4096).is_err(),
        "endless file name"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn flipped_bytes_fail_cleanly(flips in proptest::collection::vec((any::<u16>(), 1u8..), 1..4)) {
        let gz = gzip(&layer_like(5, 50_000));
        let mut bad = gz.clone();
        for (at, x) in flips {
            let i = at as usize % bad.len();
            bad[i] ^= x;
        }
        // An error, or (a flip in a header field nothing checks) the same bytes: never a
        // panic, never other bytes.
        if let Ok((_, out)) = build(&bad, 8 << 10, 333) {
            prop_assert!(out == layer_like(5, 50_000));
        }
    }

    #[test]
    fn index_bytes_from_peers_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..200), cut in any::<u16>()) {
        let gz = gzip(&layer_like(9, 150_000));
        let (index, _) = build(&gz, 16 << 10, 5000).unwrap();
        let mut bytes = index.to_bytes();
        let _ = Index::from_bytes(&junk);
        bytes.truncate(cut as usize % (bytes.len() + 1));
        let _ = Index::from_bytes(&bytes);
        if let Ok(i) = Index::from_bytes(&bytes) {
            prop_assert_eq!(i, index);
        }
    }

    #[test]
    fn spans_cut_short_say_so(start in 0u64..150_000, len in 1usize..20_000, short in 1usize..400) {
        let data = layer_like(11, 150_000);
        let gz = gzip(&data);
        let (index, _) = build(&gz, 16 << 10, 5000).unwrap();
        let end = (start + len as u64).min(data.len() as u64);
        let (cp, span) = index.span(start..end).unwrap();
        let fetched = &gz[span.start as usize..(span.end as usize).saturating_sub(short).max(span.start as usize)];
        match read_at(&index.checkpoints[cp], fetched, start, (end - start) as usize) {
            Ok(got) => prop_assert!(got == data[start as usize..end as usize]),
            Err(e) => prop_assert!(e.0.contains("short") || e.0.contains("deflate"), "{e}"),
        }
    }
}

/// A PAX record: its length counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len();
    while format!("{len}{body}").len() != len {
        len = format!("{len}{body}").len();
    }
    format!("{len}{body}")
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer with every kind of entry a mount shows; the regular files' paths and bytes.
fn layer_tar() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    let mut dir = header(tar::EntryType::Directory, 0);
    dir.set_mode(0o755);
    b.append_data(&mut dir, "etc/", std::io::empty()).unwrap();
    let long = format!("a/{}/file.txt", "b".repeat(150));
    for (path, data) in [
        ("etc/hosts".to_owned(), b"127.0.0.1 localhost\n".to_vec()),
        ("usr/lib/big.bin".to_owned(), layer_like(21, 700_000)),
        (long, b"a long name\n".to_vec()),
        ("./rel/file".to_owned(), b"relative\n".to_vec()),
        ("etc/.wh.gone".to_owned(), Vec::new()),
    ] {
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
        files.push((path.trim_start_matches("./").to_owned(), data));
    }
    let mut link = header(tar::EntryType::Symlink, 0);
    b.append_link(&mut link, "bin/sh", "/usr/bin/dash").unwrap();
    let mut hard = header(tar::EntryType::Link, 0);
    b.append_link(&mut hard, "etc/hosts2", "etc/hosts").unwrap();
    let pax = pax_record("SCHILY.xattr.user.k", "v");
    let mut x = header(tar::EntryType::XHeader, pax.len() as u64);
    b.append_data(&mut x, "PaxHeaders/xattr.txt", pax.as_bytes())
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 7);
    b.append_data(&mut h, "xattr.txt", &b"xattrs\n"[..])
        .unwrap();
    files.push(("xattr.txt".to_owned(), b"xattrs\n".to_vec()));
    (b.into_inner().unwrap(), files)
}

#[test]
fn a_layers_files_are_read_from_their_spans_alone() {
    let (tar, files) = layer_tar();
    let gz = gzip(&tar);
    let (index, entries) = index_layer(gz.as_slice(), 64 << 10).unwrap();
    assert_eq!(index.uncompressed_size, tar.len() as u64);
    let find = |p: &str| entries.iter().find(|e| e.path == p.as_bytes()).unwrap();
    assert_eq!(find("etc").kind, FileKind::Dir);
    assert_eq!(find("etc").mode, 0o755);
    let sh = find("bin/sh");
    assert_eq!(
        (sh.kind, sh.link.as_deref()),
        (FileKind::Symlink, Some(&b"/usr/bin/dash"[..]))
    );
    let hard = find("etc/hosts2");
    assert_eq!(
        (hard.kind, hard.link.as_deref()),
        (FileKind::Hardlink, Some(&b"etc/hosts"[..]))
    );
    let x = find("xattr.txt");
    assert_eq!(x.xattrs, [(b"user.k".to_vec(), b"v".to_vec())]);
    assert_eq!((x.uid, x.gid, x.mtime), (1000, 1001, 1_700_000_000));
    for (path, data) in &files {
        let e = find(path);
        assert_eq!(
            (e.kind, e.size),
            (FileKind::File, data.len() as u64),
            "{path}"
        );
        if data.is_empty() {
            continue;
        }
        let got = read(&index, &gz, e.offset..e.offset + e.size);
        assert!(&got == data, "{path}");
    }
}

#[test]
fn a_layer_whose_paths_climb_out_is_not_indexed() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 1);
    // Set the name by hand: the builder itself refuses `..`.
    h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.tx");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let gz = gzip(&b.into_inner().unwrap());
    let err = index_layer(gz.as_slice(), 1 << 20).unwrap_err();
    assert!(err.0.contains(".."), "{err}");
    // Not gzip at all.
    assert!(index_layer(&b"plain tar"[..], 1 << 20).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_layer_index_survives_its_bytes_and_junk_from_peers_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..200),
        cut in any::<u32>(),
        flip in any::<(u32, u8)>(),
    ) {
        let (tar, _) = layer_tar();
        let layer = crate::gzindex::LayerIndex::build(gzip(&tar).as_slice(), 64 << 10).unwrap();
        prop_assert_eq!(layer.diff_id, shoal_p2p::Digest::of(shoal_p2p::Algorithm::Sha256, &tar));
        let bytes = layer.to_bytes();
        prop_assert_eq!(&crate::gzindex::LayerIndex::from_bytes(&bytes).unwrap(), &layer);
        let _ = crate::gzindex::LayerIndex::from_bytes(&junk);
        let mut cut_short = bytes.clone();
        cut_short.truncate(cut as usize % bytes.len());
        prop_assert!(crate::gzindex::LayerIndex::from_bytes(&cut_short).is_err());
        let mut flipped = bytes.clone();
        let at = flip.0 as usize % bytes.len();
        flipped[at] ^= flip.1.max(1);
        let _ = crate::gzindex::LayerIndex::from_bytes(&flipped);
    }
}

#[test]
fn a_layer_of_more_files_than_a_table_may_hold_is_not_indexed() {
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..100 {
        let mut h = header(tar::EntryType::Regular, 0);
        tar.append_data(&mut h, format!("{}/{i}", "d".repeat(200)), std::io::empty())
            .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    assert_eq!(
        super::files::files(tar.as_slice(), 1 << 20).unwrap().len(),
        100
    );
    let err = super::files::files(tar.as_slice(), 10_000).unwrap_err();
    assert!(err.to_string().contains("file table over"), "{err}");
}
