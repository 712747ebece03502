//! Tests of the piece store.
use super::*;

/// A layout of 4 MiB pieces, whatever the default rule.
fn layout4(content_length: u64) -> Layout {
    Layout {
        content_length,
        piece_length: 4 << 20,
    }
}
use url::Url;

fn task(u: &str) -> TaskId {
    TaskId::for_url(&Url::parse(u).unwrap(), &Default::default())
}

fn write(store: &Store, id: &TaskId, layout: Layout, n: u32, byte: u8) -> Digest {
    let r = layout.range(n);
    let data = vec![byte; (r.end - r.start) as usize];
    store
        .writer(id)
        .unwrap()
        .write_all_at(&data, r.start)
        .unwrap();
    let d = Digest::piece(&data);
    append_record(&mut store.journal(id).unwrap(), n, &d).unwrap();
    d
}

#[test]
fn resume_keeps_recorded_pieces_and_drops_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let id = task("http://h/f");
    let layout = layout4(10 << 20);
    {
        let store = Store::open(dir.path()).unwrap();
        let st = store.open_task(&id, "http://h/f", layout, &[]).unwrap();
        assert_eq!(st.missing().count(), 3);
        write(&store, &id, layout, 0, 1);
        write(&store, &id, layout, 2, 3);
    }
    let store = Store::open(dir.path()).unwrap();
    let st = store.open_task(&id, "http://h/f", layout, &[]).unwrap();
    assert_eq!(st.missing().collect::<Vec<_>>(), vec![1]);
    assert_eq!(st.stored_bytes(), (4 << 20) + (2 << 20));
    // Corrupt piece 2 on disk: the next open notices and drops it.
    store
        .writer(&id)
        .unwrap()
        .write_all_at(b"x", 9 << 20)
        .unwrap();
    let st = store.open_task(&id, "http://h/f", layout, &[]).unwrap();
    assert_eq!(st.missing().collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn another_layout_starts_over_and_remove_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = task("http://h/g");
    let l1 = layout4(5 << 20);
    store.open_task(&id, "u", l1, &[]).unwrap();
    write(&store, &id, l1, 0, 7);
    let l2 = layout4(6 << 20);
    let st = store.open_task(&id, "u", l2, &[]).unwrap();
    assert_eq!(st.missing().count(), 2);
    assert_eq!(fs::metadata(store.data_path(&id)).unwrap().len(), 6 << 20);
    store.remove(&id).unwrap();
    assert!(store.meta(&id).unwrap().is_none());
    assert!(!store.data_path(&id).exists());
}

#[test]
fn unclean_stop_reverifies_recently_completed_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let id = task("http://h/u");
    let layout = layout4(6 << 20);
    {
        let store = Store::open(dir.path()).unwrap();
        store.open_task(&id, "u", layout, &[]).unwrap();
        write(&store, &id, layout, 0, 1);
        write(&store, &id, layout, 1, 2);
        let pieces = store.open_task(&id, "u", layout, &[]).unwrap().pieces;
        let pieces: Vec<Digest> = pieces.into_iter().map(Option::unwrap).collect();
        store.complete(&id, None, &pieces, &[]).unwrap();
    }
    // A clean stop: the next open trusts the content (even if it changed since).
    let path = Store::open(dir.path()).unwrap().data_path(&id);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"zz", 5 << 20)
        .unwrap();
    assert!(
        Store::open(dir.path())
            .unwrap()
            .meta(&id)
            .unwrap()
            .unwrap()
            .complete
    );
    // An unclean stop (no marker): the damaged piece is found and the task is unfinished.
    fs::remove_file(dir.path().join(CLEAN_MARKER)).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.meta(&id).unwrap().unwrap().complete);
    let st = store.open_task(&id, "u", layout, &[]).unwrap();
    assert_eq!(st.missing().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(Error::StoreBusy { .. })
    ));
}

#[test]
fn complete_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = task("http://h/c");
    let layout = layout4(100);
    store.open_task(&id, "http://h/c", layout, &[]).unwrap();
    write(&store, &id, layout, 0, 9);
    let d = Digest::piece(&[9u8; 100]);
    let meta = store.complete(&id, None, &[d], &[]).unwrap();
    assert_eq!(store.piece_digests(&id).unwrap(), vec![Some(d)]);
    assert!(meta.complete);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, id);
    let digest = hash_file(
        &mut store.reader(&id).unwrap(),
        crate::digest::Algorithm::Sha256,
    )
    .unwrap();
    assert_eq!(
        digest,
        Digest::of(crate::digest::Algorithm::Sha256, &[9u8; 100])
    );
}

#[test]
fn a_tasks_sources_are_kept_and_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let id = task("http://h/s");
    let layout = layout4(100);
    let src = |u: &str| crate::proto::Source {
        upstream: u.into(),
        anonymous: false,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let st = store
            .open_task(&id, "u", layout, &[src("https://a"), src("https://a")])
            .unwrap();
        assert_eq!(st.meta.sources, vec![src("https://a")]);
    }
    let store = Store::open(dir.path()).unwrap();
    let st = store
        .open_task(&id, "u", layout, &[src("https://b")])
        .unwrap();
    assert_eq!(st.meta.sources, vec![src("https://a"), src("https://b")]);
    write(&store, &id, layout, 0, 9);
    let d = Digest::piece(&[9u8; 100]);
    let meta = store
        .complete(&id, None, &[d], &[src("https://c")])
        .unwrap();
    assert_eq!(meta.sources.len(), 3);
    assert_eq!(store.meta(&id).unwrap().unwrap().sources, meta.sources);
}

#[test]
fn bytes_made_here_are_imported_as_a_complete_task_with_their_piece_digests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = task("http://h/index");
    // Over a piece: two pieces of the 1 MiB floor.
    let data: Vec<u8> = (0..(1u32 << 20) + 5).map(|i| i as u8).collect();
    let (meta, digests) = store.import(&id, "http://h/index", &data, &[]).unwrap();
    assert!(meta.complete);
    assert_eq!(meta.layout.content_length, data.len() as u64);
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[1], Digest::piece(&data[1 << 20..]));
    let held: Vec<Digest> = store
        .piece_digests(&id)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(held, digests);
    assert_eq!(std::fs::read(store.data_path(&id)).unwrap(), data);
    // Made again (smaller): replaced, not mixed with the old bytes.
    let (meta, _) = store.import(&id, "http://h/index", b"new", &[]).unwrap();
    assert_eq!(meta.layout.content_length, 3);
    assert_eq!(std::fs::read(store.data_path(&id)).unwrap(), b"new");
}

/// A piece from the origin whose bytes are not the digest the swarm published is not recorded
/// (a lazy layer's reader would otherwise be given it before the whole layer is checked).
#[tokio::test]
async fn a_piece_unlike_the_swarms_digest_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = AsyncStore::open(dir.path()).unwrap();
    let id = task("http://h/w");
    let layout = Layout {
        content_length: 200,
        piece_length: 100,
    };
    store
        .open_task(&id, "http://h/w".into(), layout, Vec::new())
        .await
        .unwrap();
    let writer = store.task_writer(&id).unwrap();
    let swarms = Digest::piece(&[1u8; 100]);
    for (n, byte, expected) in [
        (0u32, 2u8, Some(swarms)),
        (1, 1, Some(swarms)),
        (0, 1, None),
    ] {
        writer.begin(n).await.unwrap();
        let offset = u64::from(n) * 100;
        writer
            .write(n, offset, bytes::Bytes::from(vec![byte; 100]))
            .await
            .unwrap();
        let done = writer.finish(n, expected).await;
        assert_eq!(done.is_ok(), byte == 1, "piece {n} of {byte}s");
    }
    drop(writer);
    let state = store.state(&id).await.unwrap().unwrap();
    // Piece 0 was recorded only when its right bytes came.
    assert_eq!(state.pieces, vec![Some(swarms), Some(swarms)]);
}
