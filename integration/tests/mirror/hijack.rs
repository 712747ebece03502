//! HTTPS hijack: CONNECT to listed hosts ends in Shoal's TLS; others are tunnelled.

use super::*;

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
