//! `shoal doctor` against real daemons, a real scheduler, and containerd configs: each fault
//! it must find is made for real, and it says so in one line with the fix.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_integration::cluster::{Cluster, Node};
use shoal_integration::process::{ChildGuard, run, shoal};

/// `shoal doctor --json` for `node` with containerd's config `containerd`: its exit status and
/// its findings by check.
async fn doctor(node: &Node, containerd: &Path) -> (bool, Vec<Value>) {
    let mut cmd = shoal();
    cmd.arg("doctor")
        .arg("--json")
        .arg("--data-dir")
        .arg(node.data_dir.join("store"))
        .arg("--mirror")
        .arg(node.mirror_url())
        .arg("--containerd-config")
        .arg(containerd)
        .arg("--docker-config")
        .arg(containerd.with_file_name("no-docker.json"));
    let out = run(cmd).await;
    let findings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.success(), findings)
}

fn finding<'a>(findings: &'a [Value], check: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding: {findings:?}"))
}

/// Runs the doctor until its `check` finding is `ok` (or not) and its message says `saying`;
/// the findings then.
async fn doctor_until(
    node: &Node,
    containerd: &Path,
    check: &str,
    ok: bool,
    saying: &str,
) -> (bool, Vec<Value>) {
    for _ in 0..100 {
        let (fine, findings) = doctor(node, containerd).await;
        let found = findings.iter().any(|f| {
            f["check"] == check
                && f["ok"] == ok
                && f["message"].as_str().unwrap_or_default().contains(saying)
        });
        if found {
            return (fine, findings);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{check} never became ok = {ok} saying {saying:?}: {:?}",
        doctor(node, containerd).await.1
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_containerd_not_wired_a_scheduler_unreachable_and_wrong_credentials() {
    let mut cluster = Cluster::builder().daemons(1).no_seed().start().await;
    let node = &cluster.daemons[0];
    let containerd = cluster.dir().join("containerd").join("config.toml");
    std::fs::create_dir_all(containerd.parent().unwrap()).unwrap();
    std::fs::write(&containerd, "version = 2\n").unwrap();

    // containerd not wired: the one failure, with its fix.
    let (fine, findings) = doctor_until(node, &containerd, "scheduler", true, "attached").await;
    assert!(!fine, "{findings:?}");
    let ctd = finding(&findings, "containerd");
    assert_eq!(ctd["ok"], false);
    assert!(
        ctd["message"].as_str().unwrap().contains("not wired"),
        "{ctd}"
    );
    assert!(
        ctd["fix"]
            .as_str()
            .unwrap()
            .contains("shoal install containerd"),
        "{ctd}"
    );
    for check in ["daemon", "scheduler", "clock", "mirror", "disk"] {
        assert_eq!(finding(&findings, check)["ok"], true, "{findings:?}");
    }

    // Wired with `shoal install containerd`: everything is fine.
    let mut install = shoal();
    install
        .args(["install", "containerd", "--config"])
        .arg(&containerd)
        .arg("--data-dir")
        .arg(node.data_dir.join("store"))
        .arg("--mirror")
        .arg(node.mirror_url());
    assert!(run(install).await.status.success());
    // ...but the snapshotter it names is not running.
    let (fine, findings) = doctor(node, &containerd).await;
    assert!(!fine);
    let ctd = finding(&findings, "containerd");
    assert!(
        ctd["message"].as_str().unwrap().contains("does not answer"),
        "{ctd}"
    );
    assert!(
        ctd["fix"].as_str().unwrap().contains("shoal-snapshotter"),
        "{ctd}"
    );
    let mut snapshotter = shoal();
    snapshotter
        .arg("snapshotter")
        .arg("--data-dir")
        .arg(node.data_dir.join("store"))
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .arg("--mirror")
        .arg(node.mirror_url())
        .arg("--containerd")
        .arg("none");
    let _snapshotter = ChildGuard::spawn(snapshotter);
    let (fine, findings) = doctor_until(node, &containerd, "containerd", true, "wired").await;
    assert!(fine, "{findings:?}");

    // A host given another CA's credentials: the scheduler is reachable, and refuses it.
    let stranger = cluster.start_stranger("eve").await;
    let (fine, findings) =
        doctor_until(&stranger, &containerd, "scheduler", false, "refuses").await;
    assert!(!fine);
    let s = finding(&findings, "scheduler");
    let said = s["message"].as_str().unwrap();
    assert!(said.contains("refuses this host's credentials"), "{s}");
    assert!(s["fix"].as_str().unwrap().contains("shoal ca issue"), "{s}");

    // The scheduler gone: unreachable, said as such.
    cluster.scheduler = None;
    let node = &cluster.daemons[0];
    let (fine, findings) = doctor_until(node, &containerd, "scheduler", false, "unreachable").await;
    assert!(!fine);
    let s = finding(&findings, "scheduler");
    assert!(
        s["message"].as_str().unwrap().contains("unreachable"),
        "{s}"
    );
    assert!(s["fix"].as_str().unwrap().contains("port"), "{s}");

    // And the human form: one line per check, the fix on the failing line.
    let mut cmd = shoal();
    cmd.arg("doctor")
        .arg("--data-dir")
        .arg(node.data_dir.join("store"))
        .arg("--mirror")
        .arg(node.mirror_url())
        .arg("--containerd-config")
        .arg(&containerd);
    let out = run(cmd).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL scheduler"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("unreachable") && line.contains("; fix: "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_says_the_daemon_is_down_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal();
    cmd.arg("doctor")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--mirror")
        .arg(format!(
            "http://127.0.0.1:{}",
            shoal_integration::cluster::free_port()
        ))
        .arg("--containerd-config")
        .arg(dir.path().join("none.toml"));
    let out = run(cmd).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("FAIL daemon") && text.contains("systemctl start shoal-daemon"),
        "{text}"
    );
    assert!(text.contains("FAIL mirror"), "{text}");
}
