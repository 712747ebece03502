//! `shoal token` (the HTTP API's personal access tokens) and `shoal preheat` (a preheat job
//! through the scheduler's API, as Harbor starts one).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shoal_p2p::api::default_data_dir;
use shoal_scheduler::api::Tokens;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    /// The scheduler's data directory (tokens go to `<data_dir>/api/`; `shoal up`: the
    /// node's).
    #[arg(long, env = "SHOAL_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Makes a token and prints it (the only time it is shown).
    Create { name: String },
    /// The tokens' names and when they were made.
    List,
    /// Removes a token: requests with it get 401 from now on.
    Revoke { name: String },
}

impl TokenArgs {
    pub fn run(&self) -> anyhow::Result<()> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir)
            .join("api");
        let tokens = Tokens::in_dir(&dir);
        match &self.command {
            TokenCommand::Create { name } => {
                let token = tokens.create(name).context("creating the token")?;
                println!("{token}");
                eprintln!(
                    "Token {name:?} made; it is not shown again. Harbor: register the scheduler's \
                     API as a P2P provider (Dragonfly), auth mode OAuth, this token."
                );
            }
            TokenCommand::List => {
                for t in tokens.list()? {
                    let made = std::time::UNIX_EPOCH + Duration::from_secs(t.created);
                    println!("{}\t{}", t.name, humantime::format_rfc3339_seconds(made));
                }
            }
            TokenCommand::Revoke { name } => {
                if !tokens.revoke(name)? {
                    bail!("no token named {name:?} in {}", tokens.path().display());
                }
                println!("revoked {name}");
            }
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct PreheatArgs {
    /// The image: `registry.example/team/app:v1`, `…@sha256:…`.
    #[arg(required_unless_present = "list")]
    pub image: Option<String>,
    /// Where the image goes: single_seed_peer (default), all_seed_peers, all_peers.
    #[arg(long, default_value = "single_seed_peer")]
    pub scope: String,
    /// Put it on this many hosts besides the seeds (instead of a scope).
    #[arg(long, conflicts_with = "percentage")]
    pub count: Option<u32>,
    /// Put it on this percentage of the hosts besides the seeds.
    #[arg(long)]
    pub percentage: Option<u8>,
    /// `os/architecture[/variant]` of an index (default: the scheduler's `[api] platforms`,
    /// else every platform).
    #[arg(long)]
    pub platform: Option<String>,
    /// `user:password` for the registry (a robot account); the scheduler keeps it in memory
    /// while the job runs.
    #[arg(long)]
    pub user: Option<String>,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
    /// Waits until the job ends, with a progress bar; fails if the job does.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: ends with a JSON object (job, state, blobs, bytes, seconds) instead of
    /// the summary line.
    #[arg(long, requires = "wait")]
    pub json: bool,
    /// Lists the jobs instead.
    #[arg(long)]
    pub list: bool,
    /// The scheduler's HTTP API.
    #[arg(long, env = "SHOAL_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// A personal access token (`shoal token create`).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl PreheatArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        shoal_p2p::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let api = self.api.trim_end_matches('/').to_owned();
        let call = |rb: reqwest::RequestBuilder| async {
            let resp = rb
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("the scheduler's API at {api}"))?;
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !status.is_success() {
                let message = body["message"].as_str().unwrap_or("").to_owned();
                match status.as_u16() {
                    401 => bail!(
                        "the API refused the token (401): make one with `shoal token create NAME` on the scheduler"
                    ),
                    _ => bail!("the API answered {status}: {message}"),
                }
            }
            Ok(body)
        };
        if self.list {
            let jobs = call(http.get(format!("{api}/oapi/v1/jobs"))).await?;
            for job in jobs.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    job["id"],
                    job["state"].as_str().unwrap_or(""),
                    job["created_at"].as_str().unwrap_or(""),
                    job["args"]["scope"].as_str().unwrap_or(""),
                    job["args"]["url"].as_str().unwrap_or("")
                );
            }
            return Ok(());
        }
        let image = self.image.clone().context("an image to preheat")?;
        let (host, repository, reference) =
            shoal_snapshotter::pull::parse(&image).map_err(|e| anyhow::anyhow!(e))?;
        let registry = match host.as_str() {
            "docker.io" => "registry-1.docker.io".to_owned(),
            h => h.to_owned(),
        };
        let scheme = if self.plain_http { "http" } else { "https" };
        let url = format!("{scheme}://{registry}/v2/{repository}/manifests/{reference}");
        let (username, password) = match &self.user {
            Some(u) => u.split_once(':').context("--user is user:password")?,
            None => ("", ""),
        };
        let body = json!({"type": "preheat", "args": {
            "type": "image", "url": url, "scope": self.scope, "count": self.count,
            "percentage": self.percentage, "platform": self.platform.clone().unwrap_or_default(),
            "username": username, "password": password}});
        let post = http
            .post(format!("{api}/oapi/v1/jobs"))
            .header("content-type", "application/json")
            .body(body.to_string());
        let job = call(post).await?;
        let id = job["id"]
            .as_u64()
            .context("the API's answer has no job id")?;
        if !self.wait {
            println!("preheat job {id} started: {url}");
            return Ok(());
        }
        let started = std::time::Instant::now();
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} job {msg} [{bar:30}] {pos}/{len} blobs {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(id.to_string());
        let last = loop {
            let job = call(http.get(format!("{api}/oapi/v1/jobs/{id}"))).await?;
            let blobs = job["blobs"].as_array().cloned().unwrap_or_default();
            bar.set_length(blobs.len() as u64);
            bar.set_position(blobs.iter().filter(|b| b["done"] == true).count() as u64);
            if job["state"] != "PENDING" {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        bar.finish_and_clear();
        let blobs = last["blobs"].as_array().cloned().unwrap_or_default();
        let bytes: u64 = blobs
            .iter()
            .filter(|b| b["done"] == true)
            .filter_map(|b| b["size"].as_u64())
            .sum();
        let state = last["state"].as_str().unwrap_or("");
        let summary = shoal_node::summary::Summary {
            bytes,
            elapsed: started.elapsed(),
            by_source: None,
        };
        let scope = last["args"]["scope"].as_str().unwrap_or("");
        if self.json {
            let mut v = summary.json();
            v["job"] = id.into();
            v["state"] = state.into();
            v["blobs"] = blobs.len().into();
            v["scope"] = scope.into();
            println!("{v}");
        } else {
            println!(
                "preheat job {id} {state} ({scope}): {} blobs, {summary}",
                blobs.len()
            );
        }
        if state != "SUCCESS" {
            let why = last["result"]["job_states"][0]["error"]
                .as_str()
                .unwrap_or("");
            bail!("the preheat failed: {why}");
        }
        Ok(())
    }
}
