use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_seed::gzindex::index_layer;

use super::*;

/// The layer's compressed bytes in memory, counting what is fetched.
struct Counted {
    gz: Arc<Vec<u8>>,
    fetched: Arc<AtomicU64>,
}

impl Spans for Counted {
    fn fetch(&self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        self.fetched
            .fetch_add(range.end - range.start, Ordering::Relaxed);
        Ok(self.gz[range.start as usize..range.end as usize].to_vec())
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h
}

/// Bytes that do not compress (so the layer has many spans).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A gzip layer: a small file first, a big one, a symlink, a hard link, a whiteout, an opaque
/// directory, an xattr.
fn layer(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = header(tar::EntryType::Directory, 0, 0o750);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    dir(&mut b, "etc/");
    for (path, data) in [
        ("etc/hosts", &b"127.0.0.1 localhost\n"[..]),
        ("usr/lib/big.bin", big),
        ("etc/.wh.gone", &b""[..]),
        ("var/.wh..wh..opq", &b""[..]),
    ] {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o640);
        b.append_data(&mut h, path, data).unwrap();
    }
    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
    b.append_link(&mut h, "bin/sh", "/usr/bin/dash").unwrap();
    let mut h = header(tar::EntryType::Link, 0, 0o640);
    b.append_link(&mut h, "etc/hosts2", "etc/hosts").unwrap();
    let pax = "25 SCHILY.xattr.user.k=v\n";
    let mut h = header(tar::EntryType::XHeader, pax.len() as u64, 0o644);
    b.append_data(&mut h, "PaxHeaders/x", pax.as_bytes())
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 2, 0o644);
    b.append_data(&mut h, "x", &b"x\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

/// Mounted with FUSE and used as an overlay's lower layer (as containerd would), the layer
/// shows its files, reads each from the spans it needs, and overlayfs honours its whiteouts.
#[test]
fn a_gzip_layer_mounts_lazily_under_an_overlay() {
    let big = noise(3 << 20);
    let gz = Arc::new(layer(&big));
    let (index, files) = index_layer(gz.as_slice(), 256 << 10).unwrap();
    let fetched = Arc::new(AtomicU64::new(0));
    let spans = Counted {
        gz: gz.clone(),
        fetched: fetched.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("layer");
    std::fs::create_dir(&mnt).unwrap();
    let session = mount(LazyLayer::new(index, files, Box::new(spans)), &mnt)
        .expect("FUSE mount (as root, /dev/fuse)");

    // A small file costs a span, not the layer.
    assert_eq!(
        std::fs::read(mnt.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let first = fetched.load(Ordering::Relaxed);
    assert!(
        first > 0 && first < gz.len() as u64 / 4,
        "{first} of {}",
        gz.len()
    );
    // The big one reads whole and right.
    assert!(std::fs::read(mnt.join("usr/lib/big.bin")).unwrap() == big);
    let hosts = std::fs::metadata(mnt.join("etc/hosts")).unwrap();
    assert_eq!(
        (hosts.mode() & 0o7777, hosts.uid(), hosts.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(hosts.mtime(), 1_700_000_000);
    let hard = std::fs::metadata(mnt.join("etc/hosts2")).unwrap();
    assert_eq!((hard.ino(), hard.nlink()), (hosts.ino(), 2));
    assert_eq!(
        std::fs::metadata(mnt.join("etc")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(mnt.join("bin/sh")).unwrap(),
        Path::new("/usr/bin/dash")
    );
    let gone = std::fs::symlink_metadata(mnt.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(
        xattr::get(mnt.join("var"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(mnt.join("x"), "user.k").unwrap(),
        Some(b"v".to_vec())
    );
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["gone", "hosts", "hosts2"]);
    assert!(std::fs::read(mnt.join("etc/missing")).is_err());

    // Under an overlay, on a base layer holding what this one deletes.
    let base = dir.path().join("base");
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::create_dir_all(base.join("var")).unwrap();
    std::fs::write(base.join("etc/gone"), "deleted above").unwrap();
    std::fs::write(base.join("etc/kept"), "kept").unwrap();
    std::fs::write(base.join("var/old"), "hidden by the opaque directory").unwrap();
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let lower = format!("lowerdir={}:{}", mnt.display(), base.display());
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &lower])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(ok.success(), "overlay mount");
    let seen = (
        merged.join("etc/gone").exists(),
        std::fs::read_to_string(merged.join("etc/kept")).ok(),
        merged.join("var/old").exists(),
        std::fs::read(merged.join("etc/hosts")).ok(),
    );
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(
        seen,
        (
            false,
            Some("kept".to_owned()),
            false,
            Some(b"127.0.0.1 localhost\n".to_vec())
        )
    );
    session.umount_and_join().unwrap();
}

/// A file table from a peer that makes no sense builds a tree all the same, and reads past
/// what the index covers are errors, not panics.
#[test]
fn a_nonsensical_file_table_builds_a_sane_tree() {
    let entry = |path: &str, kind: FileKind, link: Option<&str>| FileEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: u64::MAX,
        gid: 0,
        mtime: u64::MAX / 2,
        size: u64::MAX,
        offset: u64::MAX - 1,
        link: link.map(|l| l.as_bytes().to_vec()),
        xattrs: Vec::new(),
        device: Some((u32::MAX, u32::MAX)),
    };
    let files = vec![
        entry("", FileKind::File, None),
        entry("a/b/c", FileKind::File, None),
        entry("a/b", FileKind::File, None),
        entry("a/b/d", FileKind::File, None),
        entry("l", FileKind::Hardlink, Some("nowhere")),
        entry("a/b/c", FileKind::Symlink, Some("x")),
    ];
    let gz = Arc::new(layer(b"data"));
    let (index, _) = index_layer(gz.as_slice(), 1 << 20).unwrap();
    let spans = Counted {
        gz,
        fetched: Arc::default(),
    };
    let layer = LazyLayer::new(index, files, Box::new(spans));
    assert_eq!(
        layer.nodes[0].entry.kind,
        FileKind::Dir,
        "the root stays a directory"
    );
    // `a/b` was made a file, then a directory again for `a/b/d` (as unpacking in order would).
    let b = layer.find(b"a/b").unwrap();
    assert_eq!(layer.nodes[(b - 1) as usize].entry.kind, FileKind::Dir);
    let a = layer.find(b"a").unwrap();
    assert_eq!(layer.nodes[(a - 1) as usize].children.len(), 1);
    assert!(
        layer.find(b"l").is_none(),
        "a hard link to nothing is left out"
    );
    let d = layer.find(b"a/b/d").unwrap();
    let _ = layer.attr(d, &layer.nodes[(d - 1) as usize]);
    assert!(
        layer
            .read_stream(u64::MAX - 10, u64::MAX)
            .unwrap_or_default()
            .is_empty()
    );
    assert!(layer.read_stream(0, 4).is_ok());
}

/// Slow fetches, counted.
struct Slow {
    gz: Arc<Vec<u8>>,
    calls: Arc<AtomicU64>,
}

impl Spans for Slow {
    fn fetch(&self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        Ok(self.gz[range.start as usize..range.end as usize].to_vec())
    }
}

/// Readahead sends several reads of one span at once: the span is fetched and inflated once,
/// the other reads wait for it (before, each fetched and inflated it again).
#[test]
fn reads_of_one_span_at_once_inflate_it_once() {
    let big = noise(3 << 20);
    let gz = Arc::new(layer(&big));
    let (index, files) = index_layer(gz.as_slice(), 1 << 20).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let spans = Slow {
        gz: gz.clone(),
        calls: calls.clone(),
    };
    let layer = Arc::new(LazyLayer::new(index, files, Box::new(spans)));
    let readers: Vec<_> = (0..8u64)
        .map(|i| {
            let layer = layer.clone();
            std::thread::spawn(move || layer.read_stream(i * 4096, 4096).unwrap())
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap().len(), 4096);
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}
