//! The seed's registry client against a real docker-registry with token auth: an image
//! reference (tag, digest, multi-platform index) resolved to its layers, with the seed's own
//! credentials or a ready pull token, and refused cleanly when the credentials or the
//! registry's bytes are wrong.

use shoal_integration::origin::TestOrigin;
use shoal_integration::registry::{Access, Image, TestRegistry};
use shoal_integration::token::TokenServer;
use shoal_seed::registry::{Credentials, Platform};
use shoal_seed::{Error, Registry};

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn http() -> reqwest::Client {
    shoal_p2p::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn layer_digests(image: &Image) -> Vec<String> {
    image
        .layers
        .iter()
        .map(|l| shoal_integration::sha256(l))
        .collect()
}

/// Pushes an index naming `amd64` and `arm64` as those platforms, plus an attestation.
async fn push_index(registry: &str, push: &str, amd64: &Image, arm64: &Image) -> String {
    let entry = |image: &Image, os: &str, arch: &str| {
        serde_json::json!({
            "mediaType": shoal_integration::registry::MANIFEST_TYPE,
            "digest": image.manifest_digest(),
            "size": image.manifest.len(),
            "platform": {"os": os, "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [
            entry(amd64, "linux", "amd64"),
            entry(arm64, "linux", "arm64"),
            entry(arm64, "unknown", "unknown"),
        ],
    })
    .to_string();
    let resp = http()
        .put(format!("{registry}/v2/team/app/manifests/multi"))
        .header("authorization", push)
        .header("content-type", INDEX_TYPE)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    shoal_integration::sha256(index.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn images_resolve_to_their_layers_through_token_auth() {
    let dir = tempfile::tempdir().unwrap();
    let password = format!("pw-{}", hex::encode(shoal_integration::random_bytes(8)));
    let tokens = TokenServer::start(dir.path(), "dave", &password)
        .await
        .unwrap();
    let access = Access::Token {
        realm: tokens.realm(),
        bundle: tokens.bundle.clone(),
    };
    let registry = TestRegistry::start(&dir.path().join("registry"), &access)
        .await
        .unwrap();
    let push = format!(
        "Bearer {}",
        tokens.token_for("repository:team/app:pull,push")
    );
    let (amd64, arm64) = (Image::random(&[1000, 2000]), Image::random(&[3000]));
    amd64
        .push(&registry.url(), "team/app", "v1", Some(&push))
        .await
        .unwrap();
    arm64
        .push(&registry.url(), "team/app", "arm", Some(&push))
        .await
        .unwrap();
    let index = push_index(&registry.url(), &push, &amd64, &arm64).await;

    let base: url::Url = registry.url().parse().unwrap();
    let seed = Registry::new(
        base.clone(),
        http(),
        Credentials::Basic {
            user: "dave".into(),
            password: password.clone(),
        },
    );
    // A tag, through the token dance with the seed's own credentials.
    let image = seed.resolve("team/app", "v1", &[]).await.unwrap();
    assert_eq!(image.digest.to_string(), amd64.manifest_digest());
    let got: Vec<String> = image
        .layers()
        .iter()
        .map(|d| d.digest.to_string())
        .collect();
    assert_eq!(got, layer_digests(&amd64));
    // The same image by digest (the token is reused).
    let by_digest = seed
        .resolve("team/app", &amd64.manifest_digest(), &[])
        .await
        .unwrap();
    assert_eq!(by_digest, image);
    // An index: every platform but the attestation, or the one asked for.
    let all = seed.resolve("team/app", "multi", &[]).await.unwrap();
    assert_eq!(all.digest.to_string(), index);
    assert_eq!(all.manifests.len(), 2);
    let platform = |m: &shoal_seed::registry::Manifest| m.platform.clone().unwrap().architecture;
    assert_eq!(platform(&all.manifests[0]), "amd64");
    assert_eq!(platform(&all.manifests[1]), "arm64");
    assert_eq!(all.layers().len(), 3);
    let arm: Platform = "linux/arm64".parse().unwrap();
    let one = seed.resolve("team/app", "multi", &[arm]).await.unwrap();
    let got: Vec<String> = one.layers().iter().map(|d| d.digest.to_string()).collect();
    assert_eq!(got, layer_digests(&arm64));

    // A ready pull token, as Harbor's preheat hands one.
    let pull = format!("Bearer {}", tokens.token_for("repository:team/app:pull"));
    let header = Credentials::Header(pull.parse().unwrap());
    let with_token = Registry::new(base.clone(), http(), header);
    assert_eq!(
        with_token.resolve("team/app", "v1", &[]).await.unwrap(),
        image
    );

    // Anonymous: the registry's own refusal. A wrong password: the token endpoint's.
    let anonymous = Registry::new(base.clone(), http(), Credentials::Anonymous);
    let err = anonymous.resolve("team/app", "v1", &[]).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let wrong = Credentials::Basic {
        user: "dave".into(),
        password: "guess".into(),
    };
    let err = Registry::new(base.clone(), http(), wrong)
        .resolve("team/app", "v1", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Token { .. }), "{err}");
    assert!(!err.to_string().contains(&password) && !err.to_string().contains("guess"));
    let err = seed.resolve("team/nothing", "v1", &[]).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_serving_other_bytes_than_the_digest_asked_for_is_refused() {
    let honest = Image::random(&[100]);
    let other = Image::random(&[200]);
    let digest = honest.manifest_digest();
    let origin = TestOrigin::builder()
        .file(
            &format!("/v2/team/app/manifests/{digest}"),
            other.manifest.clone(),
        )
        .start()
        .await;
    let base: url::Url = origin.url("/").parse().unwrap();
    let seed = Registry::new(base, http(), Credentials::Anonymous);
    let err = seed.resolve("team/app", &digest, &[]).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}
