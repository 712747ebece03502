use super::*;

fn install(runtime: Runtime, config: &Path) -> Install {
    Install {
        runtime,
        config: config.to_owned(),
        mirror: "http://127.0.0.1:4001".into(),
        socket: "/var/lib/shoal/snapshotter.sock".into(),
    }
}

const CONTAINERD_V2: &str = "version = 2\n\
    # the operator's own comment\n\
    root = \"/var/lib/containerd\"\n\
    [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
    snapshotter = \"overlayfs\"\n  \
    default_runtime_name = \"runc\"\n";

#[test]
fn containerd_is_wired_once_backed_up_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONTAINERD_V2).unwrap();
    let wire = install(Runtime::Containerd, &config);
    let changes = plan(&wire, false).unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes[0].diff().contains("+snapshotter = \"shoal\"")
            || changes[0].diff().contains("snapshotter = \"shoal\"")
    );
    apply(&changes, false).unwrap();

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# the operator's own comment"), "{text}");
    let doc: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        doc["proxy_plugins"]["shoal"]["type"].as_str(),
        Some("snapshot")
    );
    assert_eq!(
        doc["proxy_plugins"]["shoal"]["address"].as_str(),
        Some("/var/lib/shoal/snapshotter.sock")
    );
    let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("shoal"));
    assert_eq!(
        cri["containerd"]["default_runtime_name"].as_str(),
        Some("runc")
    );
    assert_eq!(
        cri["containerd"]["disable_snapshot_annotations"].as_bool(),
        Some(false)
    );
    let certs = dir.path().join("certs.d");
    assert_eq!(
        cri["registry"]["config_path"].as_str(),
        Some(certs.to_str().unwrap())
    );
    let hosts = std::fs::read_to_string(certs.join("_default/hosts.toml")).unwrap();
    let hosts: toml::Table = toml::from_str(&hosts).unwrap();
    assert!(hosts["host"].get("http://127.0.0.1:4001").is_some());
    assert_eq!(
        std::fs::read_to_string(backup_of(&config)).unwrap(),
        CONTAINERD_V2
    );

    assert_eq!(
        plan(&wire, false).unwrap(),
        [],
        "a second install changes nothing"
    );
    let undo = plan(&wire, true).unwrap();
    apply(&undo, true).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), CONTAINERD_V2);
    assert!(!certs.join("_default/hosts.toml").exists());
    assert!(!backup_of(&config).exists());
    assert_eq!(plan(&wire, true).unwrap(), [], "nothing left to undo");
}

#[test]
fn containerd_2_configs_get_version_3_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "version = 3\n").unwrap();
    apply(
        &plan(&install(Runtime::Containerd, &config), false).unwrap(),
        false,
    )
    .unwrap();
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let images = &doc["plugins"]["io.containerd.cri.v1.images"];
    assert_eq!(images["snapshotter"].as_str(), Some("shoal"));
    assert!(images["registry"]["config_path"].as_str().is_some());
}

#[test]
fn docker_and_podman_get_the_mirror_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = dir.path().join("daemon.json");
    std::fs::write(
        &daemon,
        r#"{"log-driver": "json-file", "registry-mirrors": ["https://m.example"]}"#,
    )
    .unwrap();
    let wire = install(Runtime::Docker, &daemon);
    apply(&plan(&wire, false).unwrap(), false).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon).unwrap()).unwrap();
    assert_eq!(
        json["registry-mirrors"],
        serde_json::json!(["http://127.0.0.1:4001", "https://m.example"])
    );
    assert_eq!(json["log-driver"], "json-file");
    assert_eq!(plan(&wire, false).unwrap(), []);

    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, "unqualified-search-registries = [\"docker.io\"]\n").unwrap();
    let wire = install(Runtime::Podman, &conf);
    apply(&plan(&wire, false).unwrap(), false).unwrap();
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    let hub = &doc["registry"][0];
    assert_eq!(hub["location"].as_str(), Some("docker.io"));
    assert_eq!(
        hub["mirror"][0]["location"].as_str(),
        Some("127.0.0.1:4001")
    );
    assert_eq!(hub["mirror"][0]["insecure"].as_bool(), Some(true));
    assert_eq!(plan(&wire, false).unwrap(), []);
}

#[test]
fn a_config_that_is_not_toml_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "version = 2\n[plugins\n").unwrap();
    let err = plan(&install(Runtime::Containerd, &config), false).unwrap_err();
    assert!(err.to_string().contains("config.toml"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "version = 2\n[plugins\n"
    );
    assert!(!backup_of(&config).exists());
}

#[test]
fn modes_symlinks_and_later_edits_are_respected() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    std::fs::write(&real, CONTAINERD_V2).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("config.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let wire = install(Runtime::Containerd, &link);
    apply(&plan(&wire, false).unwrap(), false).unwrap();
    assert!(
        link.symlink_metadata().unwrap().file_type().is_symlink(),
        "still a symlink"
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("proxy_plugins")
    );
    for f in [real.clone(), backup_of(&real)] {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // Edited after install: uninstall refuses rather than lose the edit.
    let mut text = std::fs::read_to_string(&real).unwrap();
    text.push_str("# the operator's later line\n");
    std::fs::write(&real, &text).unwrap();
    let err = plan(&wire, true).unwrap_err();
    assert!(err.to_string().contains("changed since"), "{err}");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), text);
}

#[test]
fn configs_that_cannot_take_the_change_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            Runtime::Containerd,
            "root = \"/var/lib/containerd\"\n",
            "version",
        ),
        (
            Runtime::Containerd,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n",
            "mirrors",
        ),
        (
            Runtime::Podman,
            "[registries.search]\nregistries = [\"docker.io\"]\n",
            "version 1",
        ),
    ];
    for (i, (runtime, text, why)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("c{i}"));
        std::fs::write(&config, text).unwrap();
        let err = plan(&install(runtime, &config), false).unwrap_err();
        assert!(err.to_string().contains(why), "{i}: {err}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    }
}
