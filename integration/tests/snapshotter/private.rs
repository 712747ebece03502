//! The snapshotter and registries only some may read: Docker's config file, `shoal pull --user`,
//! a kubelet's pull secret through the CRI proxy, and read-ahead kept to its repository.

use super::*;

/// A registry only carol may read (token auth) holding the `cat` image as `test/cat:v1`, and a
/// cluster of one node whose mirror maps the registry's host.
struct Private {
    tokens: shoal_integration::token::TokenServer,
    registry: TestRegistry,
    image: Image,
    host: String,
    reference: String,
    cluster: Cluster,
    password: String,
    /// The node's mirror.
    mirror: String,
}

async fn private_registry_and_node(dir: &Path) -> Private {
    private_registry_and_node_with(dir, image_with_cat(dir)).await
}

/// [`private_registry_and_node`] with another image as `test/cat:v1`.
async fn private_registry_and_node_with(dir: &Path, image: Image) -> Private {
    let password = format!("pw-{}", hex::encode(shoal_integration::random_bytes(8)));
    let tokens = shoal_integration::token::TokenServer::start(dir, "carol", &password)
        .await
        .unwrap();
    let access = Access::Token {
        realm: tokens.realm(),
        bundle: tokens.bundle.clone(),
    };
    let registry = TestRegistry::start(&dir.join("registry"), &access)
        .await
        .unwrap();
    let push = format!(
        "Bearer {}",
        tokens.token_for("repository:test/cat:pull,push")
    );
    image
        .push(&registry.url(), "test/cat", "v1", Some(&push))
        .await
        .unwrap();
    let host = registry.url().trim_start_matches("http://").to_owned();
    let reference = format!("{host}/test/cat:v1");
    let cluster = Cluster::builder()
        .daemons(1)
        .registry(&host, &registry.url())
        .start()
        .await;
    let mirror = format!("http://127.0.0.1:{}", cluster.daemons[0].proxy_port);
    Private {
        tokens,
        registry,
        image,
        host,
        reference,
        cluster,
        password,
        mirror,
    }
}

/// `shoal snapshotter` reading through `mirror`, with carol's credentials for `host` in a
/// Docker config file when `password` is given (as `docker login` writes it; returned), else
/// none, and containerd with it as `proxy_plugins.shoal`.
async fn with_docker_config(
    dir: &Path,
    host: &str,
    password: Option<&str>,
    mirror: &str,
) -> (String, ChildGuard, Containerd) {
    use base64::Engine as _;
    let auth = password.map_or_else(String::new, |p| {
        base64::engine::general_purpose::STANDARD.encode(format!("carol:{p}"))
    });
    let auths = match password {
        Some(_) => serde_json::json!({host: {"auth": auth}}),
        None => serde_json::json!({}),
    };
    let docker_config = dir.join("docker-config.json");
    std::fs::write(
        &docker_config,
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    let socket = dir.join("snapshotter.sock");
    let mut cmd = shoal();
    cmd.arg("snapshotter")
        .arg("--root")
        .arg(dir.join("snaps"))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-addr", "127.0.0.1:0", "--mirror", mirror])
        .arg("--docker-config")
        .arg(&docker_config)
        .stderr(std::fs::File::create(dir.join("snapshotter.log")).unwrap());
    let snapshotter = ChildGuard::spawn(cmd);
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    let ctd = Containerd::start_with(
        &dir.join("containerd"),
        &format!("[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n"),
    )
    .await;
    (auth, snapshotter, ctd)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_auth_registry_is_read_through_the_node_with_the_credentials_given() {
    let dir = tempfile::tempdir().unwrap();
    let Private {
        tokens: _tokens,
        registry: _registry,
        image: _,
        host,
        reference,
        cluster,
        password,
        mirror,
    } = private_registry_and_node(dir.path()).await;
    // The snapshotter has no credentials of its own: `shoal pull --user` lends its.
    let (_, _snapshotter, ctd) = with_docker_config(dir.path(), &host, None, &mirror).await;

    let pull = |user: Option<String>| {
        let mut cmd = shoal();
        cmd.arg("pull")
            .arg(&reference)
            .arg("--address")
            .arg(&ctd.socket)
            .args(["--mirror", &mirror])
            .arg("--snapshotter-socket")
            .arg(dir.path().join("snapshotter.sock"))
            .env("HOME", dir.path());
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        shoal_integration::process::run(cmd)
    };
    // Without credentials the registry refuses the manifest: a clear error, nothing made.
    let out = pull(None).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("401"), "{}", text(&out));
    let out = pull(Some(format!("carol:{password}"))).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(said.matches("from the swarm").count(), 2, "{said}");
    assert_image_runs(&ctd, &reference, "c").await;
    // The password is in no log.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("carol:{password}"));
    for log in [
        dir.path().join("snapshotter.log"),
        cluster.daemons[0].data_dir.join("log"),
    ] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains(&password) && !text.contains(&auth),
            "{}",
            log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_pull_through_the_image_proxy_lends_its_credentials_to_the_remote_path() {
    use shoal_snapshotter::proto::runtime::v1::image_service_client::ImageServiceClient;
    use shoal_snapshotter::proto::runtime::v1::{
        AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest,
    };
    // A registry only carol may read; a snapshotter with no credentials of its own (no Docker
    // config), whose socket forwards CRI's image service to a containerd with CRI on.
    let dir = tempfile::tempdir().unwrap();
    let Private {
        tokens: _tokens,
        registry: _registry,
        image,
        host,
        reference,
        cluster,
        password,
        mirror,
    } = private_registry_and_node(dir.path()).await;
    let ctd_dir = dir.path().join("cri");
    let socket = dir.path().join("snapshotter.sock");
    let log = dir.path().join("snapshotter.log");
    let mut cmd = shoal();
    cmd.arg("snapshotter")
        .arg("--root")
        .arg(dir.path().join("snaps"))
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-addr", "127.0.0.1:0", "--mirror", &mirror])
        .arg("--containerd")
        .arg(ctd_dir.join("containerd.sock"))
        .env("HOME", dir.path())
        .env_remove("DOCKER_CONFIG")
        .stderr(std::fs::File::create(&log).unwrap());
    let _snapshotter = ChildGuard::spawn(cmd);
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    let ctd = cri_containerd(&ctd_dir, &host, &socket).await;

    // The kubelet, with `--image-service-endpoint` naming the snapshotter's socket.
    let channel = shoal_snapshotter::client::connect(&socket).await.unwrap();
    let mut kubelet = ImageServiceClient::new(channel);
    let spec = ImageSpec {
        image: reference.clone(),
        annotations: Default::default(),
    };
    let pulled = kubelet
        .pull_image(PullImageRequest {
            image: Some(spec.clone()),
            auth: Some(AuthConfig {
                username: "carol".into(),
                password: password.clone(),
                server_address: format!("http://{host}"),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|s| panic!("PullImage through the proxy: {s:?}"))
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    // The snapshotter read every layer through the node, with the pull's credentials.
    let through_node = through_node(&cluster.daemons[0]).await;
    let layers: u64 = image.layers.iter().map(|l| l.len() as u64).sum();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("containerd fetches it itself"), "{said}");
    assert_eq!(through_node, layers);
    // Every other call is containerd's answer, unchanged.
    let status = kubelet
        .image_status(ImageStatusRequest {
            image: Some(spec),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let found = status.image.expect("the image is known");
    assert_eq!(found.id, pulled.image_ref);
    assert!(found.repo_tags.contains(&reference), "{found:?}");
    let id = unique("proxied");
    let args = ["-n", "k8s.io", "run", "--rm", "--snapshotter", "shoal"];
    let out = ctd
        .run(&[&args[..], &[&reference, &id, "/bin/cat", "/hello.txt"]].concat())
        .await;
    assert!(out.status.success(), "run: {}", text(&out));
    // The password is in no log and no file of the snapshotter's.
    let mut files = vec![log, cluster.daemons[0].data_dir.join("log")];
    let mut dirs = vec![dir.path().join("snaps")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let t = entry.file_type().unwrap();
            match (t.is_dir(), t.is_file()) {
                (true, _) => dirs.push(entry.path()),
                (_, true) => files.push(entry.path()),
                _ => {}
            }
        }
    }
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "{}",
            f.display()
        );
    }
}

/// A layer the snapshotter reads ahead for one repository, with the credentials that may read
/// it there, is not handed to a prepare that names another repository: that one reads it
/// itself, through the mirror's check of what its repository's credentials may read.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_read_ahead_for_one_repository_is_not_given_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let Private {
        tokens: _tokens,
        registry: _registry,
        image,
        host,
        reference,
        cluster: _cluster,
        password,
        mirror,
    } = private_registry_and_node(dir.path()).await;
    let (_, _snapshotter, ctd) =
        with_docker_config(dir.path(), &host, Some(&password), &mirror).await;
    let (digests, chain0, chain1) = digests_and_chain_ids(&image);
    let mut client = snapshots_client(&ctd).await;
    // test/cat's bottom layer: its top layer starts being read ahead, for test/cat.
    let req = cri_prepare("a-0", "", &chain0, &digests[0], &reference, &digests);
    let status = client.prepare(req).await.expect_err("made remotely");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    // An image of another repository whose base is test/cat's top layer (which that
    // repository does not hold): not from test/cat's read-ahead.
    let other = format!("{host}/evil/app:v1");
    let req = cri_prepare("b-0", "", &digests[1], &digests[1], &other, &digests[1..]);
    let prepared = client.prepare(req).await;
    assert!(
        prepared.is_ok(),
        "evil/app was given test/cat's layer: {prepared:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("snapshotter.log")).unwrap();
    assert!(log.contains("containerd fetches it itself"), "{log}");
    // test/cat's own prepare still gets it.
    let req = cri_prepare("a-1", &chain0, &chain1, &digests[1], &reference, &digests);
    let status = client.prepare(req).await.expect_err("made remotely");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_layers_index_and_bytes_go_only_to_a_client_the_registry_lets_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::of_gzip_layers(cat_tars(dir.path()));
    let p = private_registry_and_node_with(dir.path(), image).await;
    let layer = shoal_integration::sha256(&p.image.layers[0]);
    let url = format!("{}/v2/test/cat/blobs/{layer}?ns={}", p.mirror, p.host);
    let carol = format!("Bearer {}", p.tokens.token_for("repository:test/cat:pull"));
    let client = reqwest::Client::new();
    let ask = |lazy: &'static str, auth: Option<String>| {
        let mut req = client.get(&url).header("x-shoal-lazy", lazy);
        if lazy == "present" {
            req = req.header("range", "bytes=0-99");
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    // carol's ask sends the seed to build the index (with her credentials); then it is hers.
    let start = std::time::Instant::now();
    let index = loop {
        let resp = ask("index", Some(carol.clone())).await.unwrap();
        if resp.status() == 200 {
            break resp.bytes().await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(index.starts_with(b"SHOALGZL"));
    let present = ask("present", Some(carol.clone())).await.unwrap();
    assert_eq!(present.status(), 204);
    assert!(present.headers().contains_key("x-shoal-task-file"));
    // A prefetch list (what a first start read) is published by one who may read the layer.
    let mut list = shoal_p2p::api::PrefetchList::default();
    list.record(0..100);
    let put = |auth: Option<String>| {
        let mut req = client
            .put(&url)
            .header("x-shoal-lazy", "prefetch")
            .body(list.to_bytes());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(put(Some(carol.clone())).await.unwrap().status(), 201);
    let got = ask("prefetch", Some(carol.clone())).await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap().starts_with(b"SHOALPF1"));
    // Nobody else gets the index (its file names) or the prefetch list (what was read), has
    // the node fetch the layer for them, or publishes a list: the registry answers them, as
    // it would without Shoal.
    let stranger = format!(
        "Bearer {}",
        p.tokens.token_for("repository:other/thing:pull")
    );
    for auth in [None, Some(stranger), Some("Basic bWFsbG9yeTp4".to_owned())] {
        for lazy in ["index", "present", "prefetch"] {
            let resp = ask(lazy, auth.clone()).await.unwrap();
            assert!(
                resp.status() == 401 || resp.status() == 403,
                "{lazy} with {auth:?}: {}",
                resp.status()
            );
            assert!(!resp.headers().contains_key("x-shoal-task-file"));
            let body = resp.bytes().await.unwrap();
            assert!(!body.starts_with(b"SHOALGZL"), "{lazy} with {auth:?}");
            assert!(!body.starts_with(b"SHOALPF1"), "{lazy} with {auth:?}");
        }
        let status = put(auth.clone()).await.unwrap().status();
        assert_eq!(status, 403, "publish with {auth:?}");
    }
}
