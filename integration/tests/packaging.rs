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

    // An upgrade that moved the binary: the units are replaced, and Shoal's own earlier units
    // are not kept aside as if they were the operator's.
    let mut upgrade = shoal();
    upgrade
        .args([
            "install",
            "systemd",
            "--bin",
            "/opt/shoal/bin/shoal",
            "--unit-dir",
        ])
        .arg(&units)
        .arg("--etc-dir")
        .arg(&etc);
    assert!(run(upgrade).await.status.success());
    let daemon = std::fs::read_to_string(units.join("shoal-daemon.service")).unwrap();
    assert!(
        daemon.contains("ExecStart=/opt/shoal/bin/shoal daemon"),
        "{daemon}"
    );
    assert!(!units.join("shoal-daemon.service.shoal-backup").exists());

    // An edited config is the operator's: uninstalling (from another path than the units
    // name) keeps it, removes the units, and gives the operator's own unit back.
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

/// The metric names in a text: `shoal_…` words.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shoal_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        names.insert(word);
    }
    names
}

/// Every query string of a Grafana dashboard (panels' targets, template variables).
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push(q.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_metrics_reference_name_only_what_shoal_exports() {
    use shoal_integration::cluster::{free_port, http_get};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // `shoal up` runs every part (scheduler, daemon, mirror, snapshotter) on one /metrics.
    let _up = shoal_integration::process::ChildGuard::spawn(shoal_integration::process::up(
        &dir.path().join("data"),
        port,
    ));
    let mut scraped = None;
    for _ in 0..200 {
        match http_get(port, "/metrics").await {
            Some(m) if m.contains("shoal_lazy_") && m.contains("shoal_scheduler_") => {
                scraped = Some(m);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let scraped = scraped.expect("shoal up serves /metrics with every part's metrics");
    // The families (as documented: counters with `_total`) and every sample name.
    let mut families = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeSet::new();
    for line in scraped.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            match kind {
                "counter" => families.insert(format!("{name}_total")),
                _ => families.insert(name.to_owned()),
            };
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    samples.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            samples.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    assert!(families.len() >= 20, "{scraped}");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let reference = std::fs::read_to_string(root.join("METRICS.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = reference
        .lines()
        .filter(|l| l.starts_with("| `shoal_"))
        .flat_map(names_in)
        .filter(|n| !n.ends_with('_'))
        .collect();
    assert_eq!(
        documented, families,
        "packaging/METRICS.md's table and the exported families differ"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana/shoal.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut qs = Vec::new();
    queries(&dashboard, &mut qs);
    assert!(qs.len() >= 20, "{qs:?}");
    let mut used = std::collections::BTreeSet::new();
    for q in &qs {
        let names = names_in(q);
        assert!(!names.is_empty(), "a query of no Shoal metric: {q}");
        for n in names {
            assert!(
                samples.contains(&n),
                "the dashboard queries {n}, which nothing exports: {q}"
            );
            used.insert(n);
        }
    }
    // Every panel reads the data source chosen at import.
    for p in dashboard["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    // What the issue asks the dashboard to show is there.
    for needed in [
        "shoal_download_bytes_total",
        "shoal_upload_bytes_total",
        "shoal_scheduler_back_to_source_total",
        "shoal_scheduler_views_total",
        "shoal_lazy_fetch_seconds_bucket",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }
}

/// The image config the Dockerfile's last stage gives (`config` of an OCI image config), and
/// checks that its one file step copies the build stage's root filesystem: what CI rebuilds.
fn last_stage(dockerfile: &str) -> serde_json::Value {
    let stage = dockerfile.rsplit("\nFROM ").next().expect("a FROM");
    assert!(
        stage.starts_with("scratch"),
        "the last stage is FROM scratch"
    );
    let mut config = serde_json::json!({});
    let mut copied = false;
    for line in stage.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, arg) = line.split_once(' ').unwrap_or((line, ""));
        let json = || serde_json::from_str::<serde_json::Value>(arg).unwrap();
        match op {
            "COPY" => {
                assert_eq!(arg, "--from=build /rootfs/ /", "CI rebuilds only this copy");
                copied = true;
            }
            "ENV" => {
                let env = config["Env"].as_array().cloned().unwrap_or_default();
                let mut env = env;
                env.push(arg.into());
                config["Env"] = env.into();
            }
            "USER" => config["User"] = arg.into(),
            "WORKDIR" => config["WorkingDir"] = arg.into(),
            "ENTRYPOINT" => config["Entrypoint"] = json(),
            "CMD" => config["Cmd"] = json(),
            "VOLUME" => {
                let volumes: serde_json::Map<_, _> = json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| (v.as_str().unwrap().to_owned(), serde_json::json!({})))
                    .collect();
                config["Volumes"] = volumes.into();
            }
            "EXPOSE" => {
                let ports: serde_json::Map<_, _> = arg
                    .split_whitespace()
                    .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
                    .collect();
                config["ExposedPorts"] = ports.into();
            }
            other => panic!("the Dockerfile's last stage uses {other}, which CI does not rebuild"),
        }
    }
    assert!(copied, "the last stage copies the build stage's /rootfs");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn the_container_image_runs_shoal_as_a_non_root_user() {
    use shoal_integration::registry::{Access, Image, TestRegistry};
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The Dockerfile's build stage, on this host.
    let rootfs = dir.path().join("rootfs");
    let mut build = std::process::Command::new(root.join("packaging/container/rootfs.sh"));
    build.arg(&rootfs).env("SHOAL_BIN", shoal_bin());
    let built = run(build).await;
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // Its last stage: that tree as the one layer (owners kept), and its settings.
    let dockerfile = std::fs::read_to_string(root.join("packaging/container/Dockerfile")).unwrap();
    let config = last_stage(&dockerfile);
    assert_eq!(config["User"], "65532:65532");
    let mut tar = std::process::Command::new("tar");
    tar.args(["--sort=name", "--numeric-owner", "-C"])
        .arg(&rootfs)
        .args(["-cf", "-", "."]);
    let layer = run(tar).await;
    assert!(layer.status.success());
    let layer = bytes::Bytes::from(layer.stdout);
    let diff = shoal_integration::sha256(&layer);
    let image = Image::made_with(
        vec![layer],
        vec![diff],
        "application/vnd.oci.image.layer.v1.tar",
        config,
    );
    let registry = TestRegistry::start(&dir.path().join("registry"), &Access::Anonymous)
        .await
        .unwrap();
    image
        .push(&registry.url(), "shoal", "test", None)
        .await
        .unwrap();

    // containerd pulls it and runs `shoal get` in it: as user 65532, with its own data
    // directory, through its own TLS and HTTP stack, from an origin on the host.
    let data = shoal_integration::random_bytes(3 << 20);
    let origin = shoal_integration::origin::TestOrigin::builder()
        .file("/f", data)
        .start()
        .await;
    let ctd = shoal_integration::runtimes::Containerd::start(&dir.path().join("containerd")).await;
    let reference = format!(
        "{}/shoal:test",
        registry.url().trim_start_matches("http://")
    );
    let pulled = ctd
        .run(&["images", "pull", "--plain-http", &reference])
        .await;
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let url = origin.url("/f");
    // `shoal get URL -O out` in a container of the image, on the host's network.
    let get_to = |out: &'static str| {
        let id = format!(
            "shoal-image-{}",
            hex::encode(shoal_integration::random_bytes(4))
        );
        let (ctd, reference, url) = (&ctd, reference.clone(), url.clone());
        async move {
            let args = [
                "run",
                "--rm",
                "--net-host",
                &reference,
                &id,
                "/usr/local/bin/shoal",
                "get",
                &url,
                "-O",
                out,
            ];
            ctd.run(&args).await
        }
    };
    let ran = get_to("/var/lib/shoal/f").await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(ran.status.success(), "{said}");
    assert!(
        said.contains("3.00 MiB in ") && said.contains("origin 3.00 MiB"),
        "{said}"
    );
    // The image's user is not root: /etc is not its to write.
    let denied = get_to("/etc/f").await;
    let said = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(denied.status.code(), Some(1), "{said}");
    assert!(said.contains("Permission denied"), "{said}");
}

/// `packaging/helm/render.py` of the chart with extra values files; the rendered YAML.
async fn render_chart(values: &[&Path]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/helm");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(root.join("render.py")).arg(root.join("shoal"));
    for v in values {
        cmd.arg("-f").arg(v);
    }
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "render.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML file, as JSON (PyYAML reads it).
async fn objects(yaml: &Path) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ])
    .arg(yaml);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubernetes-validate --strict` of every object in `file` against Kubernetes 1.29.
async fn validate(file: &Path, count: usize) {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict", "-k", "1.29.0"])
        .arg(file);
    let out = run(cmd).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.matches(" passed for resource ").count(),
        count,
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helm_chart_renders_as_shipped_validates_and_configures_shoal_as_it_reads_configs() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/helm/rendered.yaml");
    let rendered = render_chart(&[]).await;
    assert_eq!(
        rendered,
        std::fs::read_to_string(&shipped).unwrap(),
        "packaging/helm/rendered.yaml is not what the chart renders: \
         python3 packaging/helm/render.py packaging/helm/shoal > packaging/helm/rendered.yaml"
    );
    let docs = objects(&shipped).await;
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in ["DaemonSet", "StatefulSet", "Service", "Secret", "ConfigMap"] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    validate(&shipped, docs.len()).await;

    // Other values: three schedulers, containerd wired by an init container.
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "scheduler:\n  replicas: 3\ndaemon:\n  containerd:\n    install: true\n",
    )
    .unwrap();
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, render_chart(&[&values]).await).unwrap();
    let docs = objects(&other).await;
    validate(&other, docs.len()).await;
    let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][1]["name"], "wire-containerd");
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();

    // Each workload's command line, with its ConfigMap's config, is one Shoal takes.
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "DaemonSet" || d["kind"] == "StatefulSet")
    {
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let mut args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let schedulers = args
            .iter()
            .filter(|a| a.starts_with("--scheduler=https://"))
            .count();
        if d["metadata"]["name"] != "shoal-scheduler" {
            assert_eq!(schedulers, 3, "{args:?}");
        }
        for a in &mut args {
            let Some(name) = a
                .strip_prefix("--config=/etc/shoal/")
                .or_else(|| a.strip_prefix("/etc/shoal/"))
            else {
                continue;
            };
            let file = dir.path().join(name);
            std::fs::write(&file, config["data"][name].as_str().unwrap()).unwrap();
            *a = if a.starts_with("--config=") {
                format!("--config={}", file.display())
            } else {
                file.display().to_string()
            };
        }
        let mut cmd = shoal();
        cmd.args(&args).arg("--check");
        let out = run(cmd).await;
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("config ok"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
