use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn fs(s: &Snapshotter, key: &str) -> PathBuf {
    s.fs_dir(s.stat(key).unwrap().id)
}

#[test]
fn a_chain_of_layers_mounts_as_containerds_overlayfs_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    let m = s.prepare("default/1/a", "", BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    std::fs::write(fs(&s, "default/1/a").join("hello"), b"hi").unwrap();
    s.commit("sha256:a", "default/1/a", labels(&[("l", "1")]))
        .unwrap();
    assert!(matches!(s.stat("default/1/a"), Err(Error::NotFound(_))));
    let a = s.stat("sha256:a").unwrap();
    assert_eq!(
        (a.kind, a.labels.clone()),
        (Kind::Committed, labels(&[("l", "1")]))
    );
    assert_eq!(s.usage("sha256:a").unwrap().inodes, 1);

    s.prepare("default/2/b", "sha256:a", BTreeMap::new())
        .unwrap();
    s.commit("sha256:b", "default/2/b", BTreeMap::new())
        .unwrap();
    let m = s.prepare("container", "sha256:b", BTreeMap::new()).unwrap();
    let (a_fs, b_fs) = (fs(&s, "sha256:a"), fs(&s, "sha256:b"));
    assert_eq!(m[0].kind, "overlay");
    assert_eq!(
        m[0].options[2],
        format!("lowerdir={}:{}", b_fs.display(), a_fs.display()),
        "nearest parent first"
    );
    assert!(m[0].options[1].starts_with("upperdir="));
    assert_eq!(s.mounts("container").unwrap(), m);

    let v = s.view("v1", "sha256:a", BTreeMap::new()).unwrap();
    assert_eq!(
        (v[0].kind.as_str(), v[0].options[0].as_str()),
        ("bind", "ro")
    );
    assert_eq!(v[0].source, a_fs.display().to_string());
    let v = s.view("v2", "sha256:b", BTreeMap::new()).unwrap();
    assert_eq!(
        v[0].options.len(),
        1,
        "a read-only overlay has no upper dir"
    );
}

#[test]
fn what_containerd_relies_on_is_refused_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    s.prepare("a", "", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.prepare("a", "", BTreeMap::new()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("b", "missing", BTreeMap::new()),
        Err(Error::NotFound(_))
    ));
    assert!(
        matches!(
            s.prepare("b", "a", BTreeMap::new()),
            Err(Error::InvalidArgument(_))
        ),
        "parent not committed"
    );
    assert!(matches!(s.mounts("nope"), Err(Error::NotFound(_))));
    s.commit("A", "a", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.commit("A2", "A", BTreeMap::new()),
        Err(Error::NotFound(_)) | Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(s.mounts("A"), Err(Error::FailedPrecondition(_))));
    s.prepare("child", "A", BTreeMap::new()).unwrap();
    assert!(
        matches!(s.remove("A"), Err(Error::FailedPrecondition(_))),
        "a parent stays"
    );
    s.prepare("x", "", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.commit("A", "x", BTreeMap::new()),
        Err(Error::AlreadyExists(_))
    ));
    let big = "v".repeat(MAX_LABEL_BYTES);
    assert!(matches!(
        s.prepare("y", "", labels(&[("k", &big)])),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.prepare("", "", BTreeMap::new()),
        Err(Error::InvalidArgument(_))
    ));
    // Nothing half-made: the refused ones left no record and no directory.
    let names: Vec<String> = s.list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count(),
        3
    );
    s.remove("child").unwrap();
    s.remove("A").unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn labels_change_by_mask_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    s.prepare("a", "", labels(&[("x", "1"), ("y", "2")]))
        .unwrap();
    let u = s
        .update(
            "a",
            labels(&[("x", "9"), ("z", "3")]),
            &["labels.x".into(), "labels.y".into()],
        )
        .unwrap();
    assert_eq!(
        u.labels,
        labels(&[("x", "9")]),
        "y removed, z not in the mask"
    );
    let u = s.update("a", labels(&[("z", "3")]), &[]).unwrap();
    assert_eq!(u.labels, labels(&[("z", "3")]));
    assert!(matches!(
        s.update("a", BTreeMap::new(), &["parent".into()]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(s.stat("a").unwrap().labels, labels(&[("z", "3")]));
}

#[test]
fn records_survive_a_restart_and_cleanup_removes_only_orphans() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Snapshotter::open(dir.path()).unwrap();
        s.prepare("a", "", BTreeMap::new()).unwrap();
        s.commit("A", "a", BTreeMap::new()).unwrap();
        s.prepare("b", "A", BTreeMap::new()).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("snapshots/77/fs")).unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    assert_eq!(s.stat("b").unwrap().parent, "A");
    assert_eq!(s.cleanup().unwrap(), 1);
    assert!(!dir.path().join("snapshots/77").exists());
    assert!(fs(&s, "A").exists() && fs(&s, "b").exists());
    // Ids are not reused after a restart.
    s.prepare("c", "", BTreeMap::new()).unwrap();
    assert_eq!(s.stat("c").unwrap().id, 3);
}

#[test]
fn a_layer_unpacked_alone_is_committed_on_its_parent_once_that_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(dir.path()).unwrap();
    s.prepare("staged-b", "", BTreeMap::new()).unwrap();
    s.prepare("a", "", BTreeMap::new()).unwrap();
    assert!(
        matches!(
            s.commit_on("B", "staged-b", Some("a"), BTreeMap::new()),
            Err(Error::InvalidArgument(_))
        ),
        "an active parent is no parent"
    );
    s.commit("A", "a", BTreeMap::new()).unwrap();
    s.commit_on("B", "staged-b", Some("A"), BTreeMap::new())
        .unwrap();
    assert_eq!(s.stat("B").unwrap().parent, "A");
    let m = s.prepare("c", "B", BTreeMap::new()).unwrap();
    assert_eq!(
        m[0].options[2],
        format!(
            "lowerdir={}:{}",
            fs(&s, "B").display(),
            fs(&s, "A").display()
        )
    );
    assert!(
        matches!(s.remove("A"), Err(Error::FailedPrecondition(_))),
        "A is B's parent now"
    );

    s.prepare("on-a", "A", BTreeMap::new()).unwrap();
    assert!(
        matches!(
            s.commit_on("X", "on-a", Some("B"), BTreeMap::new()),
            Err(Error::FailedPrecondition(_))
        ),
        "a snapshot's parent is not replaced"
    );
}
