//! The scheduler's web console in headless Chromium against a running cluster (a scheduler, a
//! seed and four daemons that each pulled one blob): sign-in, the hosts with the bytes each got
//! by source (as `shoal status` counts them), the task with its provenance, the preheat jobs.
//! Screenshots go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use shoal_integration::browser::Browser;
use shoal_integration::cluster::Cluster;
use shoal_integration::origin::TestOrigin;
use shoal_integration::process::{run, shoal};
use shoal_integration::random_bytes;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// `shoal status --json` of a node.
async fn status(data_dir: &std::path::Path) -> Value {
    let mut cmd = shoal();
    cmd.args(["status", "--json", "--data-dir"]).arg(data_dir);
    let out = run(cmd).await;
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_hosts_traffic_a_pulls_provenance_and_jobs_in_a_browser() {
    let data = random_bytes(24 << 20);
    let origin = TestOrigin::builder()
        .file("/layer.tar", data.clone())
        .start()
        .await;
    // One host's label is markup: the page must show it as text.
    let cluster = Cluster::builder()
        .daemons(4)
        .setting("swarm.labels", "zone = \"<b>z1</b>\"")
        .start()
        .await;
    let mut create = shoal();
    create
        .args(["token", "create", "console", "--data-dir"])
        .arg(cluster.scheduler_dir());
    let made = run(create).await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let console = format!("http://127.0.0.1:{}/console", cluster.api_port);

    let url = origin.url("/layer.tar?X-Amz-Signature=secret");
    for (out, result) in cluster.get_all(&url).await {
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(std::fs::read(out).unwrap().len(), data.len());
    }
    let nodes: Vec<_> = cluster.seed.iter().chain(&cluster.daemons).collect();

    // Hosts tell their traffic when it changed (every few seconds): wait until the console
    // has every host's figures as its `shoal status` counts them.
    shoal_p2p::install_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut expected = Vec::new();
    for n in &nodes {
        let s = status(&n.data_dir.join("store")).await;
        expected.push((
            n.name.clone(),
            s["downloaded"].clone(),
            s["uploaded"].clone(),
        ));
    }
    let mut told = false;
    for _ in 0..150 {
        let page = http
            .get(&console)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        told = expected.iter().all(|(name, got, sent)| {
            let row = format!("data-host=\"{name}\"");
            let Some(at) = page.find(&row) else {
                return false;
            };
            let row = page[at..].split("</tr>").next().unwrap();
            // Every figure, and told: a host not heard from yet shows zeros.
            !row.contains("no traffic told yet")
                && ["origin", "peer", "seed", "cache"]
                    .iter()
                    .all(|s| row.contains(&format!("class=\"{s}\" data-bytes=\"{}\"", got[s])))
                && row.contains(&format!("class=\"sent\" data-bytes=\"{sent}\""))
        });
        if told {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(told, "the console never showed every host's traffic");

    let browser = Browser::start(1400, 620).await;
    // Not signed in: the sign-in page, and a wrong token is refused.
    browser.goto(&console).await;
    browser.wait_for_url("/console/login").await;
    browser
        .find("#token")
        .await
        .type_text("shoal_pat_wrong")
        .await;
    browser.find("#sign-in").await.click().await;
    assert!(
        browser
            .find(".problem")
            .await
            .text()
            .await
            .contains("not valid")
    );
    browser.find("#token").await.type_text(&token).await;
    browser.find("#sign-in").await.click().await;
    browser.wait_for_url("/console").await;

    // Hosts: every one, with the bytes by source its `shoal status` shows.
    for (name, got, sent) in &expected {
        for source in ["origin", "peer", "seed", "cache"] {
            let cell = browser
                .find(&format!("tr[data-host=\"{name}\"] td.{source}"))
                .await;
            assert_eq!(
                cell.attr("data-bytes").await.unwrap(),
                got[source].to_string(),
                "{name} {source}"
            );
        }
        let up = browser
            .find(&format!("tr[data-host=\"{name}\"] td.sent"))
            .await;
        assert_eq!(
            up.attr("data-bytes").await.unwrap(),
            sent.to_string(),
            "{name}"
        );
    }
    let labelled = browser.find("tr[data-host=\"d0\"] td:nth-child(4)").await;
    assert_eq!(labelled.text().await, "zone=<b>z1</b>");
    assert!(
        browser.all("tr[data-host=\"d0\"] b").await.len() == 1,
        "only the host id is bold"
    );
    browser.screenshot(&screenshots().join("hosts.png")).await;

    // Tasks, then the task: its holders and where each got the bytes; no URL secret shown.
    browser
        .find("nav a[href=\"/console/tasks\"]")
        .await
        .click()
        .await;
    let source = browser.source().await;
    assert!(
        source.contains("/layer.tar?…") && !source.contains("secret"),
        "{source}"
    );
    browser.screenshot(&screenshots().join("tasks.png")).await;
    browser.find("#tasks tbody a").await.click().await;
    // A host tells its task's figures after the download's end: at most one round late.
    for _ in 0..50 {
        if !browser.source().await.contains("not told yet") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let here = browser.url().await;
        browser.goto(&here).await;
    }
    let rows = browser.all("#provenance tbody tr").await;
    assert_eq!(rows.len(), nodes.len());
    let mut total = 0;
    for n in &nodes {
        let row = format!("#provenance tr[data-host=\"{}\"]", n.name);
        let mut got = 0;
        for source in ["origin", "peer", "seed", "cache"] {
            let cell = browser.find(&format!("{row} td.{source}")).await;
            got += cell
                .attr("data-bytes")
                .await
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
        assert_eq!(got, data.len() as u64, "{}", n.name);
        total += got;
    }
    assert_eq!(total, (nodes.len() * data.len()) as u64);
    let footer = browser.find("#provenance tfoot").await.text().await;
    assert!(footer.contains("the origin sent 1.00 copies"), "{footer}");
    browser.screenshot(&screenshots().join("task.png")).await;

    browser
        .find("nav a[href=\"/console/jobs\"]")
        .await
        .click()
        .await;
    browser.find("#jobs").await;
    browser.screenshot(&screenshots().join("jobs.png")).await;

    // Signed out: back to the sign-in page.
    browser.find("header form button").await.click().await;
    browser.wait_for_url("/console/login").await;
    browser.goto(&console).await;
    browser.wait_for_url("/console/login").await;
}
