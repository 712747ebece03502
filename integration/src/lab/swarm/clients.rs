//! Running the clients of a scenario, and the files around them.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::ChildGuard;

fn spawn_client(mut cmd: Command) -> ChildGuard {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    ChildGuard::spawn(cmd)
}

/// Starts every command at once and waits for all, calling `tick(finished, elapsed)` every few
/// milliseconds. `tick` may return a client it broke: `(i, None)` when its result is to be
/// ignored, `(i, Some(command))` when that command replaces it (its time still counts from the
/// common start). Returns each command's seconds to exit, or why it failed.
pub(super) fn run_clients(
    commands: Vec<Command>,
    deadline: Duration,
    mut tick: impl FnMut(usize, Duration) -> Option<(usize, Option<Command>)>,
) -> anyhow::Result<Vec<anyhow::Result<f64>>> {
    let start = Instant::now();
    let mut children: Vec<ChildGuard> = commands.into_iter().map(spawn_client).collect();
    let mut done: Vec<Option<anyhow::Result<f64>>> = children.iter().map(|_| None).collect();
    let mut ignored = Vec::new();
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Some(status) = c.child.try_wait()? {
                let secs = start.elapsed().as_secs_f64();
                done[i] = Some(if status.success() || ignored.contains(&i) {
                    Ok(secs)
                } else {
                    let mut err = String::new();
                    if let Some(mut e) = c.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    Err(anyhow::anyhow!("client failed ({status}): {}", err.trim()))
                });
            }
        }
        let finished = done.iter().filter(|d| d.is_some()).count();
        if finished == children.len() {
            break;
        }
        if start.elapsed() > deadline {
            bail!("clients still running after {deadline:?}");
        }
        match tick(finished, start.elapsed()) {
            Some((i, None)) => ignored.push(i),
            Some((i, Some(again))) => {
                children[i] = spawn_client(again);
                done[i] = None;
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(done.into_iter().map(|d| d.expect("all done")).collect())
}

/// Empties a host's directory (caches, stores, outputs of an earlier scenario), keeping the
/// origin's registry, which lives on another host.
pub(super) fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Writes dirty pages and drops the page cache, so no scenario reads what an earlier one left
/// in memory (best effort: a container may not allow it).
pub(super) fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

pub(super) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}
