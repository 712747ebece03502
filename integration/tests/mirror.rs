//! The registry mirror (port 4001 of every daemon) with real clients: a real docker-registry
//! upstream, containerd 1.6 through `ctr --hosts-dir`, skopeo, and HTTP requests for the
//! distribution-spec's pull assertions.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use reqwest::StatusCode;
use shoal_integration::cluster::Cluster;
use shoal_integration::origin::TestOrigin;
use shoal_integration::registry::{Access, Image, TestRegistry};
use shoal_integration::runtimes::{Containerd, Dockerd, hosts_toml};
use shoal_integration::tls::TestCa;
use shoal_integration::token::TokenServer;

const MIB: usize = 1 << 20;
/// The registry as images name it; the mirror maps it to the test registry.
const REGISTRY: &str = "upstream.invalid:5000";
const NS: &str = "ns=upstream.invalid%3A5000";

fn client() -> reqwest::Client {
    shoal_p2p::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn origin_bytes(cluster: &Cluster) -> u64 {
    let mut total = 0;
    for node in cluster.seed.iter().chain(&cluster.daemons) {
        total += node
            .metric("shoal_download_bytes_total{source=\"origin\"}")
            .await;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_answers_the_distribution_spec_pull_assertions_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, image) = registry_with_image(
        dir.path(),
        &Access::Anonymous,
        "team/app",
        &[3 * MIB + 17, 1000],
        None,
    )
    .await;
    let cluster = mirrors_of(&registry, 1).await;
    let mirror = cluster.daemons[0].mirror_url();
    let http = client();
    let get = |path: &str| http.get(format!("{mirror}{path}?{NS}"));
    let head = |path: &str| http.head(format!("{mirror}{path}?{NS}"));

    // 1. Unknown blob: 404 for HEAD and GET.
    let unknown = shoal_integration::sha256(b"nothing");
    for rb in [
        head(&format!("/v2/team/app/blobs/{unknown}")),
        get(&format!("/v2/team/app/blobs/{unknown}")),
    ] {
        assert_eq!(rb.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    // 2. Existing blob: HEAD 200 with its digest; GET 200 with its bytes, twice (the second
    // from the store).
    let layer = &image.layers[0];
    let digest = shoal_integration::sha256(layer);
    let blob_path = format!("/v2/team/app/blobs/{digest}");
    let resp = head(&blob_path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    for _ in 0..2 {
        let resp = get(&blob_path)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers().clone();
        assert_eq!(h["docker-content-digest"], digest.as_str());
        assert_eq!(h["x-dragonfly-task-id"], digest.as_str());
        assert_eq!(h["content-length"], layer.len().to_string().as_str());
        assert!(h.get("content-encoding").is_none());
        assert!(resp.bytes().await.unwrap() == *layer);
    }
    // 3. Unknown manifest: 404.
    for rb in [
        head("/v2/team/app/manifests/nope"),
        get("/v2/team/app/manifests/nope"),
    ] {
        assert_eq!(rb.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    // 4. Manifest by tag and by digest: HEAD with length and digest, GET with the bytes.
    let md = image.manifest_digest();
    for reference in ["v1", md.as_str()] {
        let path = format!("/v2/team/app/manifests/{reference}");
        let accept = shoal_integration::registry::MANIFEST_TYPE;
        let resp = head(&path).header("accept", accept).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {reference}");
        assert_eq!(resp.headers()["docker-content-digest"], md.as_str());
        assert_eq!(
            resp.headers()["content-length"],
            image.manifest.len().to_string().as_str()
        );
        let resp = get(&path).header("accept", accept).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.bytes().await.unwrap() == image.manifest);
    }
    // 5. A malformed digest: 400 or 404.
    let s = get("/v2/team/app/manifests/sha256:totallywrong")
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
        "{s}"
    );

    // Ranges: the mirror answers as the registry does (206, Content-Range, bytes).
    for range in [
        "bytes=10-19",
        "bytes=1048570-1048589",
        "bytes=2097152-",
        "bytes=-5",
        "bytes=0-",
    ] {
        let ours = get(&blob_path).header("range", range).send().await.unwrap();
        let theirs = http
            .get(format!("{}{blob_path}", registry.url()))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(ours.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(ours.status(), theirs.status(), "{range}");
        assert_eq!(
            ours.headers()["content-range"],
            theirs.headers()["content-range"],
            "{range}"
        );
        assert!(ours.bytes().await.unwrap() == theirs.bytes().await.unwrap());
    }
    for bad in ["bytes=5-2", "bytes=0-1,5-6", "bytes=99999999-", "pages=1-2"] {
        let resp = get(&blob_path).header("range", bad).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes */{}", layer.len()).as_str()
        );
    }

    // Bad input: clear 4xx answers in the distribution-spec's error shape.
    let resp = get(&format!("/v2/Team/App/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    let resp = get("/v2/team/app/blobs/sha256:0123").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = get("/not-a-registry-path").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = get(&blob_path)
        .header("x-big", "a".repeat(100 << 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let resp = http
        .get(format!("{mirror}{blob_path}?ns=bad%2Fhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // The upstream named by X-Dragonfly-Registry instead of ?ns=.
    let resp = http
        .get(format!(
            "{mirror}/v2/team/app/blobs/{}",
            shoal_integration::sha256(&image.layers[1])
        ))
        .header("x-dragonfly-registry", registry.url())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == image.layers[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_garbled_and_vanishing_clients_get_clear_answers_and_leave_nothing_stuck() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (registry, image) =
        registry_with_image(dir.path(), &Access::Anonymous, "team/app", &[8 * MIB], None).await;
    let cluster = Cluster::builder()
        .daemons(1)
        .registry(REGISTRY, &registry.url())
        .proxy_setting("header_timeout = \"1s\"")
        .start()
        .await;
    let port = cluster.daemons[0].proxy_port;
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        (r.is_ok(), String::from_utf8_lossy(&buf).into_owned())
    };

    // A request head that never ends: the connection is closed after header_timeout.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (closed, answer) = read_all(s).await;
    assert!(closed, "a slow client kept its connection");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Not HTTP at all: 400.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"\x16\x03\x01 hello\r\n\r\n").await.unwrap();
    let (_, answer) = read_all(s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A client that goes away after the first bytes of a blob: the next one gets all of it.
    let path = format!(
        "/v2/team/app/blobs/{}?{NS}",
        shoal_integration::sha256(&image.layers[0])
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    s.read_exact(&mut first).await.unwrap();
    drop(s);
    let body = client()
        .get(format!("{}{path}", cluster.daemons[0].mirror_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body == image.layers[0]);
}

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
async fn private_blobs_reach_only_clients_the_registry_accepts_and_credentials_stay_secret() {
    let dir = tempfile::tempdir().unwrap();
    let password = secret();
    let access = Access::Basic {
        user: "alice".into(),
        password: password.clone(),
    };
    let basic = format!("alice:{password}");
    let authorization = format!("Basic {}", base64(basic.as_bytes()));
    let (registry, image) = registry_with_image(
        dir.path(),
        &access,
        "team/private",
        &[2 * MIB, 1000],
        Some(&authorization),
    )
    .await;
    // Debug logs: the secret must not appear even there.
    let cluster = Cluster::builder()
        .daemons(2)
        .registry(REGISTRY, &registry.url())
        .log("debug")
        .start()
        .await;

    // An authorised pull with containerd (credentials are given for the mirror host).
    let (ctd, hosts) = containerd_via(
        dir.path(),
        "ctd",
        REGISTRY,
        &cluster.daemons[0].mirror_url(),
    )
    .await;
    let mirror = |i: usize| cluster.daemons[i].mirror_url();
    ctr_pull(
        &ctd,
        &hosts,
        &format!("{REGISTRY}/team/private:v1"),
        &["--user", &basic],
    )
    .await;

    // Daemon 0 holds the layer now. Clients without the right credentials get the registry's
    // own refusal from it, never the bytes; daemon 1 (holding nothing) answers the same way.
    let http = client();
    let layer = &image.layers[0];
    let path = format!(
        "/v2/team/private/blobs/{}?{NS}",
        shoal_integration::sha256(layer)
    );
    let wrong = format!("Basic {}", base64(b"alice:guess"));
    for i in 0..2 {
        for auth in [None, Some(wrong.as_str())] {
            let mut rb = http.get(format!("{}{path}", mirror(i)));
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let resp = rb.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "daemon {i}, {auth:?}"
            );
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Basic"), "{challenge}");
            let body = resp.bytes().await.unwrap();
            assert!(body.len() < 1000, "daemon {i} sent {} bytes", body.len());
        }
        let resp = http
            .get(format!("{}{path}", mirror(i)))
            .header("authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.bytes().await.unwrap() == *layer);
    }

    // Credential hygiene: no node's logs, config or data hold the password or the header.
    let encoded = base64(basic.as_bytes());
    let mut checked = 0;
    for entry in walk(cluster.dir()) {
        let data = std::fs::read(&entry).unwrap_or_default();
        for secret in [password.as_bytes(), encoded.as_bytes()] {
            assert!(
                !data.windows(secret.len()).any(|w| w == secret),
                "{} contains the credential",
                entry.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 5, "only {checked} files checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn hijacked_connections_speak_http2_and_other_hosts_are_tunnelled_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let (cert, key) = ca
        .server(dir.path(), &["registry.invalid", "127.0.0.1"])
        .unwrap();
    let registry = TestRegistry::start_with(
        &dir.path().join("registry"),
        &Access::Anonymous,
        Some((&cert, &key)),
        "",
    )
    .await
    .unwrap();
    shoal_p2p::install_crypto_provider();
    let test_ca = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let image = Image::random(&[2 * MIB]);
    let direct = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([test_ca.clone()])
        .build()
        .unwrap();
    image
        .push_with(&direct, &registry.url(), "team/app", "v1", None)
        .await
        .unwrap();
    let cluster = Cluster::builder()
        .daemons(1)
        .registry("registry.invalid:443", &registry.url())
        .hijack("^registry\\.invalid:443$")
        .origin_ca(&ca.cert)
        .start()
        .await;
    let d = &cluster.daemons[0];
    let proxy = reqwest::Proxy::all(format!("http://127.0.0.1:{}", d.proxy_port)).unwrap();
    let shoal_ca = std::fs::read(d.data_dir.join("store/ca/ca.crt")).unwrap();
    let hijacked = reqwest::Client::builder()
        .proxy(proxy.clone())
        .tls_certs_only([reqwest::Certificate::from_pem(&shoal_ca).unwrap()])
        .build()
        .unwrap();
    let layer = &image.layers[0];
    let resp = hijacked
        .get(format!(
            "https://registry.invalid/v2/team/app/blobs/{}",
            shoal_integration::sha256(layer)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.bytes().await.unwrap() == *layer);
    assert_eq!(requests(d, "blob").await, 1);
    // A host not listed: the client talks TLS with the registry itself, through a tunnel.
    let tunnelled = reqwest::Client::builder()
        .proxy(proxy)
        .tls_certs_only([test_ca])
        .build()
        .unwrap();
    let resp = tunnelled
        .get(format!("{}/v2/team/app/manifests/v1", registry.url()))
        .header("accept", shoal_integration::registry::MANIFEST_TYPE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == image.manifest);
    assert_eq!(requests(d, "tunnel").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pulls_through_the_mirror_from_a_token_auth_registry() {
    let dir = tempfile::tempdir().unwrap();
    let password = secret();
    let tokens = TokenServer::start(dir.path(), "carol", &password)
        .await
        .unwrap();
    let access = Access::Token {
        realm: tokens.realm(),
        bundle: tokens.bundle.clone(),
    };
    let push = format!(
        "Bearer {}",
        tokens.token_for("repository:team/app:pull,push")
    );
    let (registry, image) = registry_with_image(
        dir.path(),
        &access,
        "team/app",
        &[3 * MIB, 1000],
        Some(&push),
    )
    .await;
    let cluster = mirrors_of(&registry, 1).await;
    let mirror = cluster.daemons[0].mirror_url();
    let (ctd, hosts) = containerd_via(dir.path(), "ctd", REGISTRY, &mirror).await;
    // containerd runs the token dance itself: the mirror passes the challenge and the
    // Bearer token through.
    let user = format!("carol:{password}");
    ctr_pull(
        &ctd,
        &hosts,
        &format!("{REGISTRY}/team/app:v1"),
        &["--user", &user],
    )
    .await;
    let blobs = requests(&cluster.daemons[0], "blob").await;
    assert!(blobs >= 3, "{blobs}");

    // No token, or a token for another repository: the registry's challenge, not the bytes.
    let http = client();
    let path = format!(
        "{mirror}/v2/team/app/blobs/{}?{NS}",
        shoal_integration::sha256(&image.layers[0])
    );
    let other = format!("Bearer {}", tokens.token_for("repository:other/app:pull"));
    for auth in [None, Some(other)] {
        let mut rb = http.get(&path);
        if let Some(a) = &auth {
            rb = rb.header("authorization", a);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        assert!(resp.bytes().await.unwrap().len() < 1000);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_the_registry_redirects_to_storage_are_fetched_without_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::random(&[3 * MIB, 1000]);
    // The "object store": the registry's blob files at the paths its redirect middleware names.
    let mut storage = TestOrigin::builder();
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let digest = shoal_integration::sha256(blob);
        let hex = &digest["sha256:".len()..];
        storage = storage.file(
            &format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]),
            blob.clone(),
        );
    }
    let storage = storage.start().await;
    let password = secret();
    let access = Access::Basic {
        user: "dave".into(),
        password: password.clone(),
    };
    let redirect = format!(
        "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {}\n",
        storage.url("")
    );
    let registry = TestRegistry::start_with(&dir.path().join("registry"), &access, None, &redirect)
        .await
        .unwrap();
    let user = format!("dave:{password}");
    let basic = format!("Basic {}", base64(user.as_bytes()));
    image
        .push(&registry.url(), "team/app", "v1", Some(&basic))
        .await
        .unwrap();
    let cluster = mirrors_of(&registry, 1).await;
    let (ctd, hosts) = containerd_via(
        dir.path(),
        "ctd",
        REGISTRY,
        &cluster.daemons[0].mirror_url(),
    )
    .await;
    ctr_pull(
        &ctd,
        &hosts,
        &format!("{REGISTRY}/team/app:v1"),
        &["--user", &user],
    )
    .await;
    let seen = storage.seen();
    let digest = shoal_integration::sha256(&image.layers[0]);
    let hex = &digest["sha256:".len()..];
    let layer = format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    assert!(
        seen.iter().any(|s| s.method == "GET" && s.path == layer),
        "the layer never came from storage: {seen:?}"
    );
    for s in &seen {
        assert!(
            !s.headers.contains_key("authorization"),
            "{} {} carried the registry credentials",
            s.method,
            s.path
        );
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
    let mirror = format!(
        "--registry-mirror=http://127.0.0.1:{}",
        cluster.daemons[0].proxy_port
    );
    let dockerd = Dockerd::start(&dir.path().join("dockerd"), &[mirror], &[]).await;
    // Without the mirror this pull would go to registry-1.docker.io, which this machine
    // cannot reach.
    let out = dockerd.run(&["pull", "app:v1"]).await;
    succeeded(&out, "docker pull failed: ");
    let out = dockerd.run(&["image", "inspect", "app:v1"]).await;
    assert!(out.status.success());
    let blobs = requests(&cluster.daemons[0], "blob").await;
    assert!(blobs >= 3, "{blobs} blob GETs became tasks");
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_pulls_from_a_tls_registry_through_the_https_hijack_with_its_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // A private registry with its own CA, under a name only the proxy resolves.
    let host = format!(
        "registry-{}.invalid",
        hex::encode(shoal_integration::random_bytes(4))
    );
    let ca = TestCa::new(dir.path()).unwrap();
    let (cert, key) = ca.server(dir.path(), &[&host, "127.0.0.1"]).unwrap();
    let password = secret();
    let access = Access::Basic {
        user: "bob".into(),
        password: password.clone(),
    };
    let registry = TestRegistry::start_with(
        &dir.path().join("registry"),
        &access,
        Some((&cert, &key)),
        "",
    )
    .await
    .unwrap();
    let basic = base64(format!("bob:{password}").as_bytes());
    shoal_p2p::install_crypto_provider();
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let image = Image::random(&[3 * MIB, 1000]);
    image
        .push_with(
            &trusting,
            &registry.url(),
            "team/app",
            "v1",
            Some(&format!("Basic {basic}")),
        )
        .await
        .unwrap();
    let target = format!("{host}:5443");
    let cluster = Cluster::builder()
        .daemons(1)
        .registry(&target, &registry.url())
        .hijack(&format!("^{}$", target.replace('.', "\\.")))
        .origin_ca(&ca.cert)
        .start()
        .await;
    let proxy = format!("http://127.0.0.1:{}", cluster.daemons[0].proxy_port);
    let dockerd = Dockerd::start(
        &dir.path().join("dockerd"),
        &[],
        &[("HTTPS_PROXY", proxy.clone()), ("HTTP_PROXY", proxy)],
    )
    .await;
    // dockerd trusts Shoal's CA for this registry, and reaches it through the proxy.
    dockerd.trust(
        &target,
        &cluster.daemons[0].data_dir.join("store/ca/ca.crt"),
    );
    dockerd.login(&target, &basic);
    let out = dockerd
        .run(&["pull", &format!("{target}/team/app:v1")])
        .await;
    succeeded(&out, "docker pull failed: ");
    let d = &cluster.daemons[0];
    let hijacked = requests(d, "hijack").await;
    let blobs = requests(d, "blob").await;
    assert!(
        hijacked >= 1 && blobs >= 3,
        "hijacked {hijacked}, blobs {blobs}"
    );
    let origin = d
        .metric("shoal_download_bytes_total{source=\"origin\"}")
        .await
        + cluster
            .seed
            .as_ref()
            .unwrap()
            .metric("shoal_download_bytes_total{source=\"origin\"}")
            .await;
    assert!(
        origin >= 3 * MIB as u64,
        "the blobs did not come through a task: {origin}"
    );
}

/// What became of the mirror's requests, by kind (`blob`, `pass`, `tunnel`, `hijack`).
async fn requests(node: &shoal_integration::cluster::Node, kind: &str) -> u64 {
    node.metric(&format!("shoal_proxy_requests_total{{kind=\"{kind}\"}}"))
        .await
}

/// Fails the test with the program's stderr unless it exited 0.
fn succeeded(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A random password, new in every test.
fn secret() -> String {
    format!("pw-{}", hex::encode(shoal_integration::random_bytes(8)))
}

/// A registry (in `dir/registry`) holding a random image with layers of `sizes` as `name:v1`,
/// pushed with `authorization`.
async fn registry_with_image(
    dir: &Path,
    access: &Access,
    name: &str,
    sizes: &[usize],
    authorization: Option<&str>,
) -> (TestRegistry, Image) {
    let registry = TestRegistry::start(&dir.join("registry"), access)
        .await
        .unwrap();
    let image = Image::random(sizes);
    image
        .push(&registry.url(), name, "v1", authorization)
        .await
        .unwrap();
    (registry, image)
}

/// `n` daemons (and a seed) whose mirrors send requests for [`REGISTRY`] to `registry`.
async fn mirrors_of(registry: &TestRegistry, n: usize) -> Cluster {
    Cluster::builder()
        .daemons(n)
        .registry(REGISTRY, &registry.url())
        .start()
        .await
}

/// A containerd (in `dir/ctd-<name>`) whose `ctr` pulls `registry` (a `hosts.toml` directory
/// name, or `_default`) through `mirror`; and that hosts directory.
async fn containerd_via(
    dir: &Path,
    name: &str,
    registry: &str,
    mirror: &str,
) -> (Containerd, PathBuf) {
    let ctd = Containerd::start(&dir.join(format!("ctd-{name}"))).await;
    let hosts = dir.join(format!("hosts-{name}"));
    hosts_toml(&hosts, registry, None, mirror);
    (ctd, hosts)
}

/// `ctr images pull` through `hosts`; the image must be pulled and unpacked.
async fn ctr_pull(ctd: &Containerd, hosts: &Path, reference: &str, extra: &[&str]) {
    let hosts = hosts.to_string_lossy();
    let mut args = vec!["images", "pull", "--hosts-dir", &hosts];
    args.extend_from_slice(extra);
    args.push(reference);
    let out = ctd.run(&args).await;
    assert!(
        out.status.success(),
        "ctr pull failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unpacking"),
        "not unpacked"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
