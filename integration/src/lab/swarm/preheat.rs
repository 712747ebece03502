//! The `shoal-preheat` scenario's client: `shoal preheat` through the first scheduler's API.

use std::process::Command;

use anyhow::{Context, ensure};

use super::Hosts;
use super::services::{self, REGISTRY_PORT, REPO};

/// `shoal preheat` of the lab's image to every host, run on the first client host against the
/// first scheduler's API, with a token made for it there.
pub(super) fn command(hosts: &Hosts) -> anyhow::Result<Command> {
    let scheduler = &hosts.schedulers[0];
    // The scheduler's directory outlives a scenario: the last one's token goes first.
    Command::new(crate::process::shoal_bin())
        .args(["token", "revoke", "lab", "--data-dir"])
        .arg(&scheduler.dir)
        .output()
        .context("shoal token revoke")?;
    let out = Command::new(crate::process::shoal_bin())
        .args(["token", "create", "lab", "--data-dir"])
        .arg(&scheduler.dir)
        .output()
        .context("shoal token create")?;
    ensure!(
        out.status.success(),
        "shoal token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut c = hosts.clients[0].command(crate::process::shoal_bin());
    c.args(["preheat", "--plain-http", "--scope", "all_peers", "--wait"])
        .arg(format!("{}:{REGISTRY_PORT}/{REPO}:v1", hosts.origin.ip))
        .arg("--api")
        .arg(format!("http://{}:{}", scheduler.ip, services::API_PORT))
        .env("SHOAL_TOKEN", token);
    Ok(c)
}
