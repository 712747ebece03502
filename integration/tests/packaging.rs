//! What operators deploy: the systemd units `shoal install systemd` writes (the example configs
//! they read are parsed by each crate's own tests).

use std::path::Path;

use shoal_integration::process::{run, shoal, shoal_bin};

const UNITS: [&str; 4] = [
    "shoal-daemon.service",
    "shoal-seed.service",
    "shoal-scheduler.service",
    "shoal-snapshotter.service",
];

async fn install(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = shoal();
    cmd.args(["install", "systemd", "--unit-dir"])
        .arg(dir.join("units"))
        .arg("--etc-dir")
        .arg(dir.join("etc"))
        .arg("--bin")
        .arg(shoal_bin())
        .args(extra);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "shoal install systemd {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn install_systemd_writes_units_that_verify_and_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    // A unit of the operator's by that name is kept aside, and given back.
    let theirs = "[Unit]\nDescription=theirs\n[Service]\nExecStart=/bin/true\n";
    std::fs::write(units.join("shoal-seed.service"), theirs).unwrap();

    let said = install(dir.path(), &["--dry-run"]).await;
    assert!(String::from_utf8_lossy(&said.stdout).contains("+ExecStart="));
    assert!(
        !units.join("shoal-daemon.service").exists(),
        "--dry-run wrote"
    );
    install(dir.path(), &[]).await;

    let bin = shoal_bin();
    let etc = dir.path().join("etc");
    for unit in UNITS {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit}: no ExecStart"));
        assert!(
            exec.starts_with(&format!("{} ", bin.display())),
            "{unit}: {exec}"
        );
        if !unit.contains("snapshotter") {
            assert!(
                exec.contains(&format!("--config {}/", etc.display())),
                "{unit}: {exec}"
            );
        }
        assert!(text.contains("NoNewPrivileges=yes"), "{unit}");
        assert!(text.contains("LimitNOFILE="), "{unit}");
    }
    // The snapshotter's mounts must be containerd's: no mount namespace of its own.
    let snap = std::fs::read_to_string(units.join("shoal-snapshotter.service")).unwrap();
    for key in [
        "ProtectSystem",
        "PrivateTmp",
        "ProtectHome",
        "ReadWritePaths",
        "PrivateMounts",
    ] {
        assert!(
            !snap.contains(&format!("\n{key}=")),
            "the snapshotter has {key}"
        );
    }
    for config in ["daemon.toml", "scheduler.toml"] {
        assert!(etc.join(config).exists(), "{config} not written");
    }

    // systemd's own check: every key known, every command executable.
    let mut verify = std::process::Command::new("systemd-analyze");
    verify
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| units.join(u)))
        .env("SYSTEMD_LOG_LEVEL", "warning");
    let v = run(verify).await;
    let complaints = String::from_utf8_lossy(&v.stderr).into_owned();
    assert!(
        v.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // A second install changes nothing.
    let mut check = shoal();
    check
        .args(["install", "systemd", "--dry-run", "--unit-dir"])
        .arg(&units)
        .arg("--etc-dir")
        .arg(&etc)
        .arg("--bin")
        .arg(&bin);
    let again = run(check).await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to change"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // An edited config is the operator's: uninstalling keeps it, removes the units, and gives
    // the operator's own unit back.
    let edited = format!(
        "{}\n# mine\n",
        std::fs::read_to_string(etc.join("daemon.toml")).unwrap()
    );
    std::fs::write(etc.join("daemon.toml"), &edited).unwrap();
    install(dir.path(), &["--uninstall"]).await;
    for unit in [
        "shoal-daemon.service",
        "shoal-scheduler.service",
        "shoal-snapshotter.service",
    ] {
        assert!(!units.join(unit).exists(), "{unit} left behind");
    }
    assert_eq!(
        std::fs::read_to_string(units.join("shoal-seed.service")).unwrap(),
        theirs
    );
    assert!(!units.join("shoal-seed.service.shoal-backup").exists());
    assert_eq!(
        std::fs::read_to_string(etc.join("daemon.toml")).unwrap(),
        edited
    );
    assert!(
        !etc.join("scheduler.toml").exists(),
        "an untouched config is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_units_are_what_install_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal();
    cmd.args([
        "install",
        "systemd",
        "--bin",
        "/usr/local/bin/shoal",
        "--etc-dir",
        "/etc/shoal",
        "--unit-dir",
    ])
    .arg(dir.path());
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    for unit in UNITS {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(unit)).unwrap(),
            std::fs::read_to_string(shipped.join(unit)).unwrap(),
            "{unit}"
        );
    }
    // A relative --bin would not start under systemd.
    let mut cmd = shoal();
    cmd.args(["install", "systemd", "--bin", "shoal", "--unit-dir"])
        .arg(dir.path());
    let bad = run(cmd).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--bin must be an absolute path"));
}
