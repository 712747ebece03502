use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use tar::{EntryType, Header};

use super::*;

/// A tar of `entries`: (path, type, data or link target).
fn tar(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == EntryType::Directory {
            0o755
        } else {
            0o640
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        match kind {
            EntryType::Symlink | EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                // `append_data` would refuse the `..` and absolute paths these tests need.
                let name = path.as_bytes();
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn layer() -> Vec<u8> {
    tar(&[
        ("etc/", EntryType::Directory, ""),
        ("etc/hostname", EntryType::Regular, "shoal\n"),
        ("etc/alias", EntryType::Link, "etc/hostname"),
        ("etc/link", EntryType::Symlink, "hostname"),
        ("etc/.wh.passwd", EntryType::Regular, ""),
        ("var/.wh..wh..opq", EntryType::Regular, ""),
        ("run/fifo", EntryType::Fifo, ""),
    ])
}

fn check(dir: &Path) {
    let hostname = dir.join("etc/hostname");
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "shoal\n");
    let meta = hostname.metadata().unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1000, 1000),
        "owners kept (tests run as root)"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.mtime(), 1_600_000_000);
    assert_eq!(
        meta.ino(),
        dir.join("etc/alias").metadata().unwrap().ino(),
        "a hard link"
    );
    assert_eq!(
        std::fs::read_link(dir.join("etc/link")).unwrap(),
        Path::new("hostname")
    );
    let whiteout = dir.join("etc/passwd").symlink_metadata().unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert!(!dir.join("etc/.wh.passwd").exists());
    assert_eq!(
        xattr::get(dir.join("var"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(
        dir.join("run/fifo")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_the_same_with_overlay_whiteouts() {
    let plain = layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = ruzstd::encoding::compress_to_vec(
        plain.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for (name, bytes) in [("tar", plain.clone()), ("gzip", gz), ("zstd", zst)] {
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(bytes.as_slice(), dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((got.entries, got.whiteouts), (7, 2), "{name}");
        let diff_id = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&plain))
        );
        assert_eq!(
            got.diff_id, diff_id,
            "{name}: the whole tar, padding included"
        );
        check(dir.path());
    }
}

#[test]
fn nothing_lands_outside_the_snapshot() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let attacks: Vec<Vec<u8>> = vec![
        tar(&[("../escaped", EntryType::Regular, "x")]),
        tar(&[
            ("up", EntryType::Symlink, &target),
            ("up/escaped", EntryType::Regular, "x"),
        ]),
        tar(&[
            ("up", EntryType::Symlink, &target),
            ("up/.wh.escaped", EntryType::Regular, ""),
        ]),
        tar(&[
            ("up", EntryType::Symlink, &target),
            ("up/.wh..wh..opq", EntryType::Regular, ""),
        ]),
        tar(&[("a/../../.wh.escaped", EntryType::Regular, "")]),
        tar(&[("hard", EntryType::Link, &format!("{target}/victim"))]),
    ];
    std::fs::write(outside.path().join("victim"), "mine").unwrap();
    for (i, attack) in attacks.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let _ = unpack(attack.as_slice(), dir.path());
        let mut left: Vec<String> = std::fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["victim"], "attack {i} wrote outside");
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim")).unwrap(),
            "mine",
            "attack {i}"
        );
        assert_eq!(
            outside.path().join("victim").metadata().unwrap().nlink(),
            1,
            "attack {i}"
        );
    }
}

#[test]
fn device_nodes_and_garbage_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let dev = tar(&[("dev/null", EntryType::Char, "")]);
    assert!(matches!(
        unpack(dev.as_slice(), dir.path()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(!dir.path().join("dev/null").exists());
    let mut truncated = layer();
    truncated.truncate(700);
    assert!(unpack(truncated.as_slice(), dir.path()).is_err());
    let gz_garbage = [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    assert!(unpack(&gz_garbage[..], dir.path()).is_err());
}

#[test]
fn several_zstd_frames_are_one_layer_and_a_whiteout_of_nothing_is_refused() {
    let plain = layer();
    let (a, b) = plain.split_at(1024);
    let mut zst = ruzstd::encoding::compress_to_vec(a, ruzstd::encoding::CompressionLevel::Fastest);
    zst.extend(ruzstd::encoding::compress_to_vec(
        b,
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    let dir = tempfile::tempdir().unwrap();
    let got = unpack(zst.as_slice(), dir.path()).unwrap();
    assert_eq!(got.entries, 7);
    check(dir.path());
    for bad in [".wh.", "a/.wh..", ".wh.."] {
        let dir = tempfile::tempdir().unwrap();
        let attack = tar(&[(bad, EntryType::Regular, "")]);
        assert!(unpack(attack.as_slice(), dir.path()).is_err(), "{bad:?}");
        assert!(
            dir.path().is_dir(),
            "{bad:?} replaced the snapshot's own directory"
        );
    }
}

/// A tar whose first entry is an extension (`kind`: `L`, `x`) of `data`, then a small file.
fn with_extension(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::new(kind));
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    let mut f = Header::new_gnu();
    f.set_size(2);
    f.set_mode(0o644);
    f.set_uid(0);
    f.set_gid(0);
    f.set_mtime(0);
    b.append_data(&mut f, "short", &b"hi"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn extension_entries_are_followed_and_bounded() {
    // A long name (GNU `L`) of a real path: followed, unpacked under it.
    let long = format!("{}/file", "d".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let mut f = Header::new_gnu();
    f.set_size(2);
    f.set_mode(0o644);
    f.set_uid(0);
    f.set_gid(0);
    f.set_mtime(0);
    b.append_data(&mut f, "after", &b"ok"[..]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let got = unpack(b.into_inner().unwrap().as_slice(), dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&long)).unwrap(),
        "abc"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("after")).unwrap(),
        "ok"
    );
    assert_eq!(got.entries, 2);

    // An extension entry over the bound (a gzip bomb's shape) is refused before `tar` holds it.
    let bomb = with_extension(b'L', &vec![b'a'; (guard::MAX_EXTENSION + 1) as usize]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bomb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = unpack(gz.finish().unwrap().as_slice(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("extension entry"), "{err}");

    // A PAX header is read; one that says a size is refused.
    let pax = |records: &str| with_extension(b'x', records.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    unpack(pax("20 mtime=1600000000\n").as_slice(), dir.path()).unwrap();
    assert!(dir.path().join("short").exists());
    let dir = tempfile::tempdir().unwrap();
    let err = unpack(pax("12 size=100\n").as_slice(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("PAX size"), "{err}");
}

proptest::proptest! {
    #[test]
    fn any_bytes_through_the_guard_fail_cleanly_or_pass(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
        let mut g = guard::Guard::new(data.as_slice());
        let _ = std::io::copy(&mut g, &mut std::io::sink());
        let dir = tempfile::tempdir().unwrap();
        let _ = unpack(data.as_slice(), dir.path());
    }
}
