//! Credentials through the mirror: private blobs, token auth, storage redirects, hygiene.

use super::*;

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

    // Issue 13 (2): a registry the client names vouches only for content that came from it. A
    // server answering 200 to any HEAD, named as the registry (header, Range, forward proxy),
    // gets the client its own answer, never the private layer from the swarm.
    let fake = TestOrigin::builder().claims_all().start().await;
    let digest = shoal_integration::sha256(layer);
    let blob = format!("/v2/anyone/blobs/{digest}");
    let proxied = |i: usize| {
        let proxy = reqwest::Proxy::http(mirror(i)).unwrap();
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    };
    for i in 0..2 {
        let named = http
            .get(format!("{}{blob}", mirror(i)))
            .header("x-dragonfly-registry", fake.url(""));
        let cases = [
            ("named", named.try_clone().unwrap()),
            ("range", named.header("range", "bytes=0-")),
            ("proxy", proxied(i).get(fake.url(&blob))),
        ];
        for (how, rb) in cases {
            let resp = rb.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "daemon {i}, {how}");
            assert!(!resp.headers().contains_key("x-dragonfly-task-id"));
            let body = resp.bytes().await.unwrap();
            assert!(body.len() < 1000, "daemon {i}, {how}: {} bytes", body.len());
        }
    }
    assert!(
        fake.seen().iter().any(|s| s.method == "HEAD"),
        "the fake registry was never asked"
    );

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

/// Issue 13 (6): URL tasks had no access check, and their ids leave signature parameters out, so
/// a presigned object fetched once through the proxy was served to anyone who knew its URL
/// without the signature. The origin now answers the client's own request first.
#[tokio::test(flavor = "multi_thread")]
async fn a_presigned_url_replayed_without_its_signature_gets_no_bytes() {
    let data = shoal_integration::random_bytes(3 * MIB);
    let origin = TestOrigin::builder()
        .file("/bucket/obj", data.clone())
        .signed("Signature=good")
        .start()
        .await;
    // A CDN's redirect to the signed URL: the check follows it, as the client would.
    let cdn = TestOrigin::builder()
        .redirect("/obj", &origin.url("/bucket/obj?Signature=good"))
        .start()
        .await;
    let cluster = Cluster::builder().daemons(1).start().await;
    shoal_p2p::install_crypto_provider();
    let proxy = reqwest::Proxy::http(cluster.daemons[0].mirror_url()).unwrap();
    let http = reqwest::Client::builder().proxy(proxy).build().unwrap();
    let get = |query: &str| {
        http.get(origin.url(&format!("/bucket/obj{query}")))
            .header("x-dragonfly-use-p2p", "true")
            .send()
    };
    // The signed URL, through the swarm.
    let resp = get("?Expires=9&Signature=good").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-dragonfly-task-id"));
    assert_eq!(resp.bytes().await.unwrap(), data);
    // The same object (the same task) without its signature, or with a forged one.
    for query in ["", "?Expires=9", "?Expires=9&Signature=forged"] {
        let resp = get(query).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{query:?}");
        assert!(!resp.headers().contains_key("x-dragonfly-task-id"));
        let body = resp.bytes().await.unwrap();
        assert!(body.len() < 1000, "{query:?}: {} bytes", body.len());
    }
    // The signed URL still comes from the swarm.
    let resp = get("?Expires=9&Signature=good").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), data);
    let no_follow = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(cluster.daemons[0].mirror_url()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow
        .get(cdn.url("/obj"))
        .header("x-dragonfly-use-p2p", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the swarm answers, not the CDN's redirect"
    );
    assert!(resp.headers().contains_key("x-dragonfly-task-id"));
    assert_eq!(resp.bytes().await.unwrap(), data);
}
