//! Preheat through the scheduler's HTTP API, with Harbor's exact requests: the Dragonfly v2
//! driver (`/healthy`, `POST /oapi/v1/jobs`, polling), the legacy driver (`/_ping`,
//! `/preheats`, its 208), Kraken's notification, and both webhook formats; against a real
//! docker-registry with token auth. A preheat's blobs are the tasks pulls use: after one, a
//! pull through another host's mirror sends no layer byte from the origin.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shoal_integration::cluster::Cluster;
use shoal_integration::process::{run, shoal};
use shoal_integration::registry::{Access, Image, TestRegistry, tar_one_file};
use shoal_integration::token::TokenServer;

const MIB: usize = 1 << 20;
/// The registry as the mirrors' clients name it.
const REGISTRY: &str = "upstream.invalid:5000";
const NS: &str = "ns=upstream.invalid%3A5000";

struct Setup {
    _dir: tempfile::TempDir,
    tokens: TokenServer,
    registry: TestRegistry,
    image: Image,
    cluster: Cluster,
    /// The API's personal access token.
    pat: String,
    /// The registry user's password (the webhooks' robot account).
    password: String,
    http: reqwest::Client,
}

impl Setup {
    /// A token-auth registry holding `team/app:v1` (two gzip layers and a plain one), a
    /// scheduler whose webhooks preheat as the registry's user, a seed and two daemons whose
    /// mirrors serve that registry, and a token made with `shoal token create`; with
    /// `schedulers` schedulers sharing the tasks (the first serves the API).
    async fn start(schedulers: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let password = format!("pw-{}", hex::encode(shoal_integration::random_bytes(8)));
        let tokens = TokenServer::start(dir.path(), "robot", &password)
            .await
            .unwrap();
        let access = Access::Token {
            realm: tokens.realm(),
            bundle: tokens.bundle.clone(),
        };
        let registry = TestRegistry::start(&dir.path().join("registry"), &access)
            .await
            .unwrap();
        let image = Image::of_gzip_layers(vec![
            tar_one_file("big.bin", &shoal_integration::random_bytes(3 * MIB)),
            tar_one_file("small.bin", &shoal_integration::random_bytes(1000)),
        ]);
        let push = format!(
            "Bearer {}",
            tokens.token_for("repository:team/app:pull,push")
        );
        image
            .push(&registry.url(), "team/app", "v1", Some(&push))
            .await
            .unwrap();
        let secret = dir.path().join("robot-secret");
        std::fs::write(&secret, format!("{password}\n")).unwrap();
        let cluster = Cluster::builder()
            .daemons(2)
            .schedulers(schedulers)
            .registry(REGISTRY, &registry.url())
            .scheduler_setting("[api]")
            .scheduler_setting("robot_user = \"robot\"")
            .scheduler_setting(&format!("robot_secret_file = {secret:?}"))
            .scheduler_setting("webhook_scheme = \"http\"")
            .scheduler_setting(&format!(
                "webhook_registries = [{:?}]",
                registry.url().trim_start_matches("http://")
            ))
            .start()
            .await;
        let mut create = shoal();
        create
            .args(["token", "create", "harbor", "--data-dir"])
            .arg(cluster.scheduler_dir());
        let out = run(create).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pat = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        shoal_p2p::install_crypto_provider();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Setup {
            _dir: dir,
            tokens,
            registry,
            image,
            cluster,
            pat,
            password,
            http,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.cluster.api_port)
    }

    /// What Harbor's HTTP client sends: JSON both ways, the provider's auth header.
    async fn harbor(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = self
            .http
            .request(method.parse().unwrap(), self.api(path))
            .header("accept", "application/json")
            .header("authorization", format!("Bearer {}", self.pat));
        if let Some(body) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The pull token Harbor mints for a preheat: pull on the one repository.
    fn pull_token(&self) -> String {
        format!(
            "Bearer {}",
            self.tokens.token_for("repository:team/app:pull")
        )
    }

    fn manifest_url(&self) -> String {
        format!("{}/v2/team/app/manifests/v1", self.registry.url())
    }

    /// Polls the v2 job until it is no longer PENDING (as Harbor does, but every 200 ms).
    async fn wait_v2(&self, id: u64) -> Value {
        let start = Instant::now();
        loop {
            let (status, job) = self
                .harbor("GET", &format!("/oapi/v1/jobs/{id}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if job["state"] != "PENDING" {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "job {id} still pending: {job}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn origin_bytes(&self) -> u64 {
        let mut total = 0;
        for node in self.cluster.seed.iter().chain(&self.cluster.daemons) {
            total += node
                .metric("shoal_download_bytes_total{source=\"origin\"}")
                .await;
        }
        total
    }

    /// Every file under the test's directory holding `secret`.
    fn files_holding(&self, secret: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![self.cluster.dir().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(t) if t.is_file() => {
                        let bytes = std::fs::read(&path).unwrap_or_default();
                        if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                            found.push(path.display().to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }
}

/// Checks a job answer has the types Harbor's `dragonflyJobResponse` decodes.
fn as_harbor_reads(job: &Value) -> u64 {
    let id = job["id"].as_u64().expect("id is a JSON integer");
    for t in ["created_at", "updated_at"] {
        let at = job[t].as_str().expect("timestamps are strings");
        humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{t} {at:?}: {e}"));
    }
    assert!(["PENDING", "SUCCESS", "FAILURE"].contains(&job["state"].as_str().unwrap()));
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn harbors_dragonfly_driver_preheats_and_a_pull_then_takes_nothing_from_the_origin() {
    let s = Setup::start(1).await;
    // Health is open; everything else needs the token.
    let health = s.http.get(s.api("/healthy")).send().await.unwrap();
    assert!(health.status().is_success());
    let pull = s.pull_token();
    // Exactly what Harbor ≥ 2.12 posts (every field present, `timeout` a Go duration).
    let body = json!({"type": "preheat",
        "args": {"type": "image", "url": s.manifest_url(), "tag": "",
                 "filtered_query_params": "", "headers": {"Authorization": pull},
                 "scope": "single_seed_peer", "concurrent_count": 0, "timeout": 0},
        "scheduler_cluster_ids": null});
    for bad in ["Bearer shoal_pat_0000", "Basic aGFyYm9yOnNlY3JldA=="] {
        let resp = s
            .http
            .post(s.api("/oapi/v1/jobs"))
            .header("authorization", bad)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    let before = s.origin_bytes().await;
    let (status, job) = s.harbor("POST", "/oapi/v1/jobs", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let id = as_harbor_reads(&job);
    let done = s.wait_v2(id).await;
    as_harbor_reads(&done);
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let results = &done["result"]["job_states"][0]["results"][0];
    let success = results["success_tasks"].as_array().unwrap();
    // Config, two layers, two gzip indexes: each on the seed chosen for it.
    assert_eq!(success.len(), 5, "{done}");
    for t in success {
        assert_eq!(t["hostname"], "seed", "{t}");
        assert_eq!(t["ip"], "127.0.0.1", "{t}");
        assert!(
            t["url"]
                .as_str()
                .unwrap()
                .contains("/v2/team/app/blobs/sha256:")
        );
    }
    assert!(results["failure_tasks"].as_array().unwrap().is_empty());
    let preheated = s.origin_bytes().await - before;
    let image_bytes: usize =
        s.image.layers.iter().map(|l| l.len()).sum::<usize>() + s.image.config.len();
    assert!(
        preheated >= image_bytes as u64,
        "the seed fetched {preheated} bytes"
    );

    // A pull on another host, through its mirror, with the client's own token: every blob
    // from the swarm.
    let client_token = format!("Bearer {}", s.tokens.token_for("repository:team/app:pull"));
    let mirror = s.cluster.daemons[1].mirror_url();
    for blob in s.image.layers.iter().chain([&s.image.config]) {
        let digest = shoal_integration::sha256(blob);
        let resp = s
            .http
            .get(format!("{mirror}/v2/team/app/blobs/{digest}?{NS}"))
            .header("authorization", &client_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap(), *blob);
    }
    assert_eq!(
        s.origin_bytes().await - before,
        preheated,
        "the pull took bytes from the origin"
    );

    // all_peers: every host holds every blob.
    let all = json!({"type": "preheat", "args": {"type": "image", "url": s.manifest_url(),
        "headers": {"Authorization": pull}, "scope": "all_peers"}});
    let (_, job) = s.harbor("POST", "/oapi/v1/jobs", Some(all)).await;
    let done = s.wait_v2(as_harbor_reads(&job)).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let success = done["result"]["job_states"][0]["results"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .clone();
    for host in ["seed", "d0", "d1"] {
        let held = success.iter().filter(|t| t["hostname"] == host).count();
        assert_eq!(held, 5, "{host}: {done}");
    }
    assert_eq!(
        s.origin_bytes().await - before,
        preheated,
        "all_peers went to the origin"
    );

    // The job list, newest first; a revoked token counts no more.
    let (status, list) = s.harbor("GET", "/oapi/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let mut revoke = shoal();
    revoke
        .args(["token", "revoke", "harbor", "--data-dir"])
        .arg(s.cluster.scheduler_dir());
    assert!(run(revoke).await.status.success());
    let (status, _) = s.harbor("GET", "/oapi/v1/jobs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Harbor's pull token is in no log and no file (jobs, tokens, stores).
    let jwt = pull.trim_start_matches("Bearer ");
    assert_eq!(s.files_holding(jwt), Vec::<String>::new());
    assert!(
        s.files_holding(&s.pat).is_empty(),
        "the API token was written somewhere"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn harbors_legacy_and_kraken_drivers_and_a_failed_preheat() {
    let s = Setup::start(1).await;
    for health in ["/_ping", "/health"] {
        assert!(
            s.http
                .get(s.api(health))
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    // Harbor ≤ 2.11 posts its PreheatImage as it is; the answer's `ID` is a string.
    let image = json!({"type": "image", "url": s.manifest_url(),
        "headers": {"Authorization": s.pull_token()}, "image": "team/app", "tag": "v1",
        "digest": s.image.manifest_digest(),
        "extra_attrs": {"scope": "single_seed_peer", "cluster_ids": [1]}});
    let (status, created) = s.harbor("POST", "/preheats", Some(image.clone())).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["ID"].as_str().expect("ID is a string").to_owned();
    let start = Instant::now();
    let last = loop {
        let (status, job) = s.harbor("GET", &format!("/preheats/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(job["ID"], id.as_str());
        match job["Status"].as_str().unwrap() {
            "WAITING" | "RUNNING" => {}
            _ => break job,
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last["Status"], "SUCCESS", "{last}");
    humantime::parse_rfc3339(last["startTime"].as_str().unwrap()).unwrap();
    humantime::parse_rfc3339(last["finishTime"].as_str().unwrap()).unwrap();
    // The same image again: already preheated (208), which the legacy driver takes as success.
    let (status, again) = s.harbor("POST", "/preheats", Some(image)).await;
    assert_eq!(status, StatusCode::ALREADY_REPORTED, "{again}");
    assert_eq!(again["ID"], id.as_str());

    // Kraken's notification (Go field names), preheated with the configured robot account.
    let notification = json!({"Events": [{"Id": "e1", "TimeStamp": "2026-12-07T10:00:00Z",
        "Action": "push", "Target": {"MediaType": "application/vnd.oci.image.manifest.v1+json",
        "Digest": s.image.manifest_digest(), "Repository": "team/app",
        "Url": s.manifest_url(), "Tag": "v1"}, "Request": null, "Actor": null}]});
    let (status, answer) = s
        .harbor("POST", "/registry/notifications", Some(notification))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["jobs"][0].as_u64().unwrap();
    assert_eq!(s.wait_v2(id).await["state"], "SUCCESS");

    // `shoal preheat` starts the same job, waits with its bar, and ends with one line.
    let host = s.registry.url().trim_start_matches("http://").to_owned();
    let mut cli = shoal();
    cli.args([
        "preheat",
        &format!("{host}/team/app:v1"),
        "--plain-http",
        "--wait",
    ])
    .args([
        "--scope",
        "all_seed_peers",
        "--user",
        &format!("robot:{}", s.password),
    ])
    .args(["--api", &s.api("")])
    .env("SHOAL_TOKEN", &s.pat);
    let out = run(cli).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SUCCESS (all_seed_peers): 5 blobs, "),
        "{stdout}"
    );
    let mut list = shoal();
    list.args(["preheat", "--list", "--api", &s.api("")])
        .env("SHOAL_TOKEN", &s.pat);
    let out = run(list).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(
        listed.lines().next().unwrap().contains("all_seed_peers"),
        "{listed}"
    );
    let mut refused = shoal();
    refused
        .args(["preheat", "--list", "--api", &s.api("")])
        .env("SHOAL_TOKEN", "shoal_pat_wrong");
    let out = run(refused).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal token create"));

    // A token for another repository: the registry refuses, the job fails and says why.
    let wrong = format!("Bearer {}", s.tokens.token_for("repository:other/app:pull"));
    let body = json!({"type": "preheat", "args": {"type": "image", "url": s.manifest_url(),
        "headers": {"Authorization": wrong}, "scope": ""}});
    let (_, job) = s.harbor("POST", "/oapi/v1/jobs", Some(body)).await;
    let failed = s.wait_v2(job["id"].as_u64().unwrap()).await;
    assert_eq!(failed["state"], "FAILURE");
    let why = failed["result"]["job_states"][0]["error"].as_str().unwrap();
    assert!(why.contains("401"), "{why}");
    // A layer said to be gzip that is not: its index cannot be built, which fails no preheat.
    let tar = tar_one_file("f.bin", &shoal_integration::random_bytes(5000));
    let liar = Image::made_of(
        vec![tar.clone()],
        vec![shoal_integration::sha256(&tar)],
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    let push = format!(
        "Bearer {}",
        s.tokens.token_for("repository:team/liar:pull,push")
    );
    liar.push(&s.registry.url(), "team/liar", "v1", Some(&push))
        .await
        .unwrap();
    let pull = format!("Bearer {}", s.tokens.token_for("repository:team/liar:pull"));
    let body = json!({"type": "preheat", "args": {"type": "image",
        "url": format!("{}/v2/team/liar/manifests/v1", s.registry.url()),
        "headers": {"Authorization": pull}, "scope": "single_seed_peer"}});
    let (_, job) = s.harbor("POST", "/oapi/v1/jobs", Some(body)).await;
    let done = s.wait_v2(job["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let index = done["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["index"] == true)
        .expect("the layer's index was asked for")
        .clone();
    assert_eq!(index["done"], true, "{index}");
    assert!(
        index["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["held"] == false),
        "{index}"
    );

    // Bad requests get a clear 400.
    for bad in [
        json!({"type": "sync_peers", "args": {}}),
        json!({"type": "preheat", "args": {"type": "image", "url": "https://h/not/a/manifest"}}),
        json!({"type": "preheat", "args": {"type": "image", "url": s.manifest_url(), "scope": "everyone"}}),
    ] {
        let (status, answer) = s.harbor("POST", "/oapi/v1/jobs", Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_push_webhooks_in_both_formats_start_preheats() {
    let s = Setup::start(1).await;
    let host = s.registry.url().trim_start_matches("http://").to_owned();
    let data = json!({
        "resources": [{"digest": s.image.manifest_digest(), "tag": "v1",
                       "resource_url": format!("{host}/team/app:v1")}],
        "repository": {"date_created": 1_755_000_000, "name": "app", "namespace": "team",
                       "repo_full_name": "team/app", "repo_type": "private"}});
    let default = json!({"type": "PUSH_ARTIFACT", "occur_at": 1_755_770_000,
        "operator": "admin", "event_data": data});
    let cloud = json!({"specversion": "1.0", "requestid": "r1", "id": "u1",
        "source": "/projects/1/webhook/policies/3", "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json", "time": "2026-12-07T10:00:00Z",
        "data": data, "operator": "admin"});
    for (payload, content_type) in [
        (default, "application/json"),
        (cloud, "application/cloudevents+json"),
    ] {
        // Harbor sends the policy's auth_header verbatim and gives up after 3 s.
        let started = Instant::now();
        let resp = s
            .http
            .post(s.api("/webhooks/harbor"))
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {}", s.pat))
            .body(payload.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(3));
        let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        let id = answer["jobs"][0].as_u64().expect("a job started");
        let done = s.wait_v2(id).await;
        assert_eq!(done["state"], "SUCCESS", "{done}");
        assert_eq!(done["via"], "webhook");
    }
    // A hook naming another registry gets no job: the robot's secret goes to the configured
    // registries only.
    let mut elsewhere = data.clone();
    elsewhere["resources"][0]["resource_url"] = json!("attacker.example:5000/team/app:v1");
    let hook = json!({"type": "PUSH_ARTIFACT", "event_data": elsewhere});
    let (status, answer) = s.harbor("POST", "/webhooks/harbor", Some(hook)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (_, list) = s.harbor("GET", "/oapi/v1/jobs", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Other events are answered and ignored; a hook without the token is refused.
    let pulled = json!({"type": "PULL_ARTIFACT", "event_data": {"resources": [],
        "repository": {"repo_full_name": "team/app"}}});
    let (status, answer) = s
        .harbor("POST", "/webhooks/harbor", Some(pulled.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["ignored"], "PULL_ARTIFACT");
    let resp = s
        .http
        .post(s.api("/webhooks/harbor"))
        .body(pulled.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The robot's secret is in no log and no file of the cluster's.
    assert_eq!(s.files_holding(&s.password), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preheat_ends_when_other_schedulers_own_some_of_its_blobs() {
    // Two schedulers share the tasks; the one Harbor calls owns only some of the image's. The
    // hosts it sends jobs to tell it what they hold when they are done, whoever owns the task.
    let s = Setup::start(2).await;
    let urls = s.cluster.scheduler_urls();
    let owner = |task: &str| {
        (0..urls.len())
            .max_by_key(|&i| shoal_p2p::swarm::rendezvous(task, &urls[i]))
            .unwrap()
    };
    // An image with a blob the second scheduler owns (pushed until there is one).
    let push = format!(
        "Bearer {}",
        s.tokens.token_for("repository:team/app:pull,push")
    );
    let image = loop {
        let image = Image::of_gzip_layers(vec![tar_one_file(
            "f.bin",
            &shoal_integration::random_bytes(100_000),
        )]);
        let tasks = [&image.config, &image.layers[0]].map(|b| shoal_integration::sha256(b));
        let index = shoal_p2p::TaskId::gzip_index(&tasks[1].parse().unwrap());
        if tasks
            .iter()
            .map(String::as_str)
            .chain([index.as_str()])
            .any(|t| owner(t) == 1)
        {
            break image;
        }
    };
    image
        .push(&s.registry.url(), "team/app", "v2", Some(&push))
        .await
        .unwrap();
    let url = format!("{}/v2/team/app/manifests/v2", s.registry.url());
    let body = json!({"type": "preheat", "args": {"type": "image", "url": url,
        "headers": {"Authorization": s.pull_token()}, "scope": "all_peers"}});
    let (status, job) = s.harbor("POST", "/oapi/v1/jobs", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let done = s.wait_v2(as_harbor_reads(&job)).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let success = done["result"]["job_states"][0]["results"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .len();
    // Config, layer and index, each on the seed and both daemons.
    assert_eq!(success, 3 * 3, "{done}");
}
