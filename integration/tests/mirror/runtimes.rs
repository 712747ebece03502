//! Container runtimes pulling through the mirror: containerd (ctr), skopeo, dockerd.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pulls_through_the_mirror_and_a_second_host_gets_the_layers_from_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, image) = registry_with_image(
        dir.path(),
        &Access::Anonymous,
        "team/app",
        &[8 * MIB, 4 * MIB, 1000],
        None,
    )
    .await;
    let cluster = mirrors_of(&registry, 2).await;
    let reference = format!("{REGISTRY}/team/app:v1");

    // Host A: a hosts.toml for the registry; host B: the catch-all `_default`.
    let (a, hosts_a) =
        containerd_via(dir.path(), "a", REGISTRY, &cluster.daemons[0].mirror_url()).await;
    let (b, hosts_b) = containerd_via(
        dir.path(),
        "b",
        "_default",
        &cluster.daemons[1].mirror_url(),
    )
    .await;

    ctr_pull(&a, &hosts_a, &reference, &[]).await;
    let layers: u64 = image.layers.iter().map(|l| l.len() as u64).sum();
    let blobs = layers + image.config.len() as u64;
    let after_a = origin_bytes(&cluster).await;
    assert!(
        after_a >= blobs,
        "the swarm fetched {after_a} of {blobs} bytes"
    );
    assert!(
        after_a <= blobs + blobs / 20,
        "the origin sent {after_a} bytes for {blobs}"
    );

    ctr_pull(&b, &hosts_b, &reference, &[]).await;
    assert_eq!(
        origin_bytes(&cluster).await,
        after_a,
        "the second host's pull reached the origin"
    );
    let d1 = &cluster.daemons[1];
    let from_swarm = d1
        .metric("shoal_download_bytes_total{source=\"peer\"}")
        .await
        + d1.metric("shoal_download_bytes_total{source=\"seed\"}")
            .await;
    assert!(
        from_swarm >= blobs,
        "host B got {from_swarm} bytes from the swarm"
    );

    // Both runtimes hold the same, complete image.
    for ctd in [&a, &b] {
        let out = ctd.run(&["images", "check"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("complete"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_through_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, image) =
        registry_with_image(dir.path(), &Access::Anonymous, "team/app", &[3 * MIB], None).await;
    // skopeo sends no `ns`: the mirror's default registry is the test registry.
    let cluster = Cluster::builder()
        .daemons(1)
        .default_registry(&registry.url())
        .start()
        .await;
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = {REGISTRY:?}\nlocation = {REGISTRY:?}\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:{}\"\ninsecure = true\n",
            cluster.daemons[0].proxy_port
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out_dir = dir.path().join("copy");
    let mut cmd = std::process::Command::new("skopeo");
    cmd.arg("copy")
        .arg("--policy")
        .arg(&policy)
        .arg("--registries-conf")
        .arg(&conf)
        .arg(format!("docker://{REGISTRY}/team/app:v1"))
        .arg(format!("dir:{}", out_dir.display()));
    let out = shoal_integration::process::run(cmd).await;
    succeeded(&out, "");
    let digest = shoal_integration::sha256(&image.layers[0]);
    let copied = std::fs::read(out_dir.join(&digest["sha256:".len()..])).unwrap();
    assert!(copied == image.layers[0]);
    let blobs = requests(&cluster.daemons[0], "blob").await;
    assert!(blobs >= 1, "skopeo's blob GETs did not become tasks");
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_pulls_a_docker_hub_image_through_registry_mirrors() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _image) = registry_with_image(
        dir.path(),
        &Access::Anonymous,
        "library/app",
        &[3 * MIB, 1000],
        None,
    )
    .await;
    // Docker sends Hub requests to the mirror with no `ns`: they go to the default registry,
    // which stands in for Docker Hub here.
    let cluster = Cluster::builder()
        .daemons(1)
        .default_registry(&registry.url())
        .start()
        .await;
    // Wired as `shoal install docker` wires it: `registry-mirrors` in the daemon.json dockerd
    // reads (its /etc/docker).
    let etc = dir.path().join("dockerd/etc-docker");
    std::fs::create_dir_all(&etc).unwrap();
    let mut install = shoal_integration::process::shoal();
    install
        .args(["install", "docker", "--config"])
        .arg(etc.join("daemon.json"))
        .arg("--mirror")
        .arg(format!(
            "http://127.0.0.1:{}",
            cluster.daemons[0].proxy_port
        ));
    succeeded(
        &shoal_integration::process::run(install).await,
        "shoal install docker: ",
    );
    let dockerd = Dockerd::start(&dir.path().join("dockerd"), &[], &[]).await;
    // Without the mirror this pull would go to registry-1.docker.io, which this machine
    // cannot reach.
    let out = dockerd.run(&["pull", "app:v1"]).await;
    succeeded(&out, "docker pull failed: ");
    let out = dockerd.run(&["image", "inspect", "app:v1"]).await;
    assert!(out.status.success());
    let blobs = requests(&cluster.daemons[0], "blob").await;
    assert!(blobs >= 3, "{blobs} blob GETs became tasks");
}

/// Issue 14: with the registry down, an image this node already served pulls again (by tag
/// where `proxy.tags_when_down` opts in, by digest always) from the manifests it kept and the
/// public blobs it holds; an upstream the content did not come from gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_the_node_has_pulls_while_the_registry_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, image) = registry_with_image(
        dir.path(),
        &Access::Anonymous,
        "team/app",
        &[4 * MIB, 1000],
        None,
    )
    .await;
    let cluster = Cluster::builder()
        .daemons(1)
        .registry(REGISTRY, &registry.url())
        .proxy_setting("tags_when_down = [\".*\"]")
        .start()
        .await;
    let mirror = cluster.daemons[0].mirror_url();
    let by_tag = format!("{REGISTRY}/team/app:v1");
    let by_digest = format!("{REGISTRY}/team/app@{}", image.manifest_digest());
    let (a, hosts_a) = containerd_via(dir.path(), "a", REGISTRY, &mirror).await;
    ctr_pull(&a, &hosts_a, &by_tag, &[]).await;
    drop(registry);

    // Fresh runtimes (nothing in their content stores) pull the image from the node.
    for (name, reference) in [("b", &by_tag), ("c", &by_digest)] {
        let (ctd, hosts) = containerd_via(dir.path(), name, REGISTRY, &mirror).await;
        ctr_pull(&ctd, &hosts, reference, &[]).await;
        let out = ctd.run(&["images", "check"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("complete"), "{name}: {text}");
    }
    // Kept for the registry it came from, not for one a client names.
    let elsewhere = client()
        .get(format!(
            "{mirror}/v2/team/app/manifests/{}",
            image.manifest_digest()
        ))
        .header("x-dragonfly-registry", "http://127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::BAD_GATEWAY);
    // A tag never seen is not known.
    let unseen = client()
        .get(format!("{mirror}/v2/team/app/manifests/v2?{NS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(unseen.status(), StatusCode::BAD_GATEWAY);
}
