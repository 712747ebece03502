//! `shoal install`: wires a container runtime on this host to the local node — containerd's
//! config gets the `shoal` snapshotter (`proxy_plugins`), CRI's snapshotter settings (the remote
//! path's labels on) and `config_path` with a catch-all mirror (`certs.d/_default/hosts.toml`);
//! Docker's `daemon.json` gets `registry-mirrors`; podman's and CRI-O's `registries.conf` a
//! mirror for Docker Hub. Edits keep what the files hold (comments too), are idempotent, and
//! back each file up once (`<file>.shoal-backup`) before its first change; `uninstall`
//! restores the backups.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, value};

use crate::error::{Error, Result};

/// Marks the files `shoal install` wrote from nothing (removed again by `uninstall`).
const MARK: &str = "# written by `shoal install`";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Docker,
    Podman,
}

/// What to wire, and to what.
#[derive(Clone, Debug)]
pub struct Install {
    pub runtime: Runtime,
    /// The runtime's config file.
    pub config: PathBuf,
    /// The node's registry mirror (`http://127.0.0.1:4001`).
    pub mirror: String,
    /// The node's snapshotter socket.
    pub socket: PathBuf,
}

/// One file's change: `after` None removes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: Option<String>,
    /// What was there is the operator's: it is kept aside (once) before it is changed.
    pub backup: bool,
}

impl Change {
    fn of(path: &Path, after: Option<String>) -> Result<Option<Change>> {
        let before = read(path)?;
        Ok((before != after).then(|| Change {
            path: path.to_owned(),
            before,
            after,
            backup: true,
        }))
    }

    /// The change as lines removed (`-`) and added (`+`), with the file's name.
    pub fn diff(&self) -> String {
        let text = |t: &Option<String>| t.clone().unwrap_or_default();
        let (a, b) = (text(&self.before), text(&self.after));
        let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        let mut out = format!("--- {0}\n+++ {0}\n", self.path.display());
        // Longest common subsequence of lines (config files are short).
        let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i][j] = if a[i] == b[j] {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                (i, j) = (i + 1, j + 1);
            } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
                out += &format!("+{}\n", b[j]);
                j += 1;
            } else {
                out += &format!("-{}\n", a[i]);
                i += 1;
            }
        }
        out
    }
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn backup_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".shoal-backup");
    PathBuf::from(name)
}

/// The changes installing (or, with `uninstall`, removing) makes; none when done already.
pub fn plan(install: &Install, uninstall: bool) -> Result<Vec<Change>> {
    // (file, whether it is containerd's catch-all hosts.toml)
    let files = match install.runtime {
        Runtime::Containerd => vec![
            (install.config.clone(), false),
            (hosts_toml(install)?, true),
        ],
        Runtime::Docker | Runtime::Podman => vec![(install.config.clone(), false)],
    };
    let mut changes = Vec::new();
    for (path, hosts) in files {
        // A config that is a symlink is changed where it points.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let after = if uninstall {
            match read(&backup_of(&path))? {
                Some(original) => {
                    // Edited since `shoal install`: restoring would lose that edit.
                    let installed = edit(install, &path, hosts, Some(&original))?;
                    if read(&path)?.is_some_and(|now| now != installed) {
                        return Err(Error::FailedPrecondition(format!(
                            "{} changed since `shoal install`; remove Shoal's settings by hand \
                             (the file before install is {})",
                            path.display(),
                            backup_of(&path).display()
                        )));
                    }
                    Some(original)
                }
                // Written from nothing: removed; otherwise never touched.
                None => match read(&path)? {
                    Some(t) if t.starts_with(MARK) => None,
                    other => other,
                },
            }
        } else {
            let text = read(&path)?;
            Some(edit(install, &path, hosts, text.as_deref())?)
        };
        changes.extend(Change::of(&path, after)?);
    }
    Ok(changes)
}

/// A file Shoal writes whole (a systemd unit, an example config), with what it holds.
#[derive(Clone, Debug)]
pub struct Owned {
    pub path: PathBuf,
    /// Starts with [`OWNED_MARK`] when the file is Shoal's own (a unit): such a file found there
    /// is an earlier install's, replaced without a backup and removed by `uninstall` even if
    /// it changed since (a unit's changes belong in drop-ins).
    pub text: String,
    /// A file already there is the operator's (a config): installing leaves it as it is, and
    /// `uninstall` removes it only while it holds what Shoal wrote.
    pub keep_existing: bool,
}

/// The mark a file Shoal writes whole starts with.
pub const OWNED_MARK: &str = MARK;

/// The changes writing `files` (or, with `uninstall`, taking them back) makes. Installing
/// replaces an operator's file of that name (backed up by [`apply`]); uninstalling restores
/// the backup, or removes what Shoal wrote.
pub fn plan_owned(files: &[Owned], uninstall: bool) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for f in files {
        let now = read(&f.path)?;
        let marked = f.text.starts_with(MARK);
        let ours = now
            .as_deref()
            .is_some_and(|t| t == f.text || (marked && t.starts_with(MARK)));
        let after = match (uninstall, read(&backup_of(&f.path))?) {
            (false, _) if f.keep_existing && now.is_some() => continue,
            (false, _) => Some(f.text.clone()),
            (true, Some(original)) => {
                if !ours && now.is_some() {
                    return Err(Error::FailedPrecondition(format!(
                        "{} changed since `shoal install`; the file before install is {}",
                        f.path.display(),
                        backup_of(&f.path).display()
                    )));
                }
                Some(original)
            }
            (true, None) if ours => None,
            (true, None) => continue,
        };
        if let Some(mut c) = Change::of(&f.path, after)? {
            c.backup = !ours;
            changes.push(c);
        }
    }
    Ok(changes)
}

/// Makes the changes; a file changed for the first time is backed up first (installing).
pub fn apply(changes: &[Change], uninstall: bool) -> Result<()> {
    for c in changes {
        let backup = backup_of(&c.path);
        if !uninstall
            && c.backup
            && let Some(before) = &c.before
            && !backup.exists()
        {
            write_like_at(&backup, &c.path, before)?;
        }
        match &c.after {
            Some(text) => {
                if let Some(dir) = c.path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
                }
                write_like(&c.path, text)?;
            }
            None => std::fs::remove_file(&c.path).map_err(|e| Error::io("remove", &c.path, e))?,
        }
        if uninstall && backup.exists() {
            std::fs::remove_file(&backup).map_err(|e| Error::io("remove", &backup, e))?;
        }
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file renamed over it, synced, with the mode
/// and owner `path` had (a config may hold registry credentials: never more readable).
fn write_like(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("shoal-tmp");
    write_like_at(&tmp, path, text)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write", path, e))
}

/// Writes `text` to `to` (synced), with the mode and owner of `like` when it exists (else 0644).
fn write_like_at(to: &Path, like: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let meta = std::fs::metadata(like).ok();
    let mode = meta
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let _ = std::fs::remove_file(to);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)
        .map_err(|e| Error::io("write", to, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("write", to, e))?;
    if let Some(m) = &meta {
        std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))
            .map_err(|e| Error::io("write", to, e))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", to, e))
}

/// The runtime's file `path` (containerd's catch-all hosts.toml when `hosts`), holding `text`,
/// with Shoal wired in.
fn edit(install: &Install, path: &Path, hosts: bool, text: Option<&str>) -> Result<String> {
    let bad = |e: String| Error::InvalidArgument(format!("{}: {e}", path.display()));
    match install.runtime {
        Runtime::Containerd if hosts => Ok(format!(
            "{MARK}: every registry is pulled through the local Shoal node first.\n\
             [host.{:?}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            install.mirror
        )),
        Runtime::Containerd => containerd(install, text.unwrap_or(""), path).map_err(bad),
        Runtime::Docker => docker(install, text).map_err(bad),
        Runtime::Podman => podman(install, text.unwrap_or("")).map_err(bad),
    }
}

/// `certs.d/_default/hosts.toml` beside the config, or under the `config_path` it names.
fn hosts_toml(install: &Install) -> Result<PathBuf> {
    let doc: DocumentMut = read(&install.config)?
        .unwrap_or_default()
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", install.config.display())))?;
    let dir = cri_table(&doc, version(&doc))
        .and_then(|t| {
            t.get("registry")?
                .get("config_path")?
                .as_str()
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| {
            // Beside the config itself (where a symlink points), as `containerd()` writes it.
            std::fs::canonicalize(&install.config)
                .unwrap_or_else(|_| install.config.clone())
                .parent()
                .unwrap_or(Path::new("/etc/containerd"))
                .join("certs.d")
        });
    Ok(dir.join("_default").join("hosts.toml"))
}

/// The config's schema version: its `version`, else that of the installed containerd (3 for
/// 2.x), else 2.
fn version(doc: &DocumentMut) -> i64 {
    if let Some(v) = doc.get("version").and_then(Item::as_integer) {
        return v;
    }
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    match text.split_whitespace().nth(2) {
        Some(v) if v.trim_start_matches('v').starts_with('2') => 3,
        _ => 2,
    }
}

fn cri_path(version: i64) -> &'static [&'static str] {
    match version {
        3 => &["plugins", "io.containerd.cri.v1.images"],
        _ => &["plugins", "io.containerd.grpc.v1.cri", "containerd"],
    }
}

fn cri_table(doc: &DocumentMut, version: i64) -> Option<&Table> {
    let mut at = doc.as_table();
    let path = cri_path(version);
    // v2's `registry` is beside `containerd`, v3's inside the images table.
    let path = if version == 3 { path } else { &path[..2] };
    for key in path {
        at = at.get(key)?.as_table()?;
    }
    Some(at)
}

/// The table at `path` under `root`, made (implicit, as `[a.b]` headers do) where missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> std::result::Result<&'a mut Table, String> {
    let mut at = root;
    for key in path {
        let item = at.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        at = item
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    Ok(at)
}

fn containerd(install: &Install, text: &str, path: &Path) -> std::result::Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let version = version(&doc);
    if doc.get("version").is_none() && !doc.as_table().is_empty() {
        return Err(
            "a config without `version` is containerd's version 1: migrate it first \
                    (`containerd config migrate`)"
                .into(),
        );
    }
    let legacy = cri_table(&doc, version)
        .and_then(|t| t.get("registry")?.as_table())
        .is_some_and(|r| r.contains_key("mirrors") || r.contains_key("configs"));
    if legacy {
        return Err(
            "its CRI registry has `mirrors` or `configs`, which containerd refuses beside \
                    `config_path`: move them to a certs.d directory first"
                .into(),
        );
    }
    if doc.get("version").is_none() {
        doc = format!("version = {version}\n{text}")
            .parse()
            .map_err(|e| format!("{e}"))?;
    }
    let plugin = table_at(doc.as_table_mut(), &["proxy_plugins", "shoal"])?;
    plugin.set_implicit(false);
    plugin.insert("type", value("snapshot"));
    plugin.insert("address", value(install.socket.display().to_string()));
    let cri = table_at(doc.as_table_mut(), cri_path(version))?;
    cri.insert("snapshotter", value("shoal"));
    cri.insert("disable_snapshot_annotations", value(false));
    let registry_path: Vec<&str> = match version {
        3 => vec!["plugins", "io.containerd.cri.v1.images", "registry"],
        _ => vec!["plugins", "io.containerd.grpc.v1.cri", "registry"],
    };
    let registry = table_at(doc.as_table_mut(), &registry_path)?;
    if registry
        .get("config_path")
        .and_then(Item::as_str)
        .is_none_or(str::is_empty)
    {
        let dir = path
            .parent()
            .unwrap_or(Path::new("/etc/containerd"))
            .join("certs.d");
        registry.insert("config_path", value(dir.display().to_string()));
    }
    Ok(doc.to_string())
}

fn docker(install: &Install, text: Option<&str>) -> std::result::Result<String, String> {
    let mut config: serde_json::Value = match text {
        Some(t) if !t.trim().is_empty() => serde_json::from_str(t).map_err(|e| e.to_string())?,
        _ => serde_json::json!({}),
    };
    let object = config.as_object_mut().ok_or("not a JSON object")?;
    let mirrors = object
        .entry("registry-mirrors")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .ok_or("`registry-mirrors` is not a list")?;
    if !mirrors
        .iter()
        .any(|m| m.as_str() == Some(install.mirror.as_str()))
    {
        mirrors.insert(0, install.mirror.clone().into());
    }
    serde_json::to_string_pretty(&config)
        .map(|t| t + "\n")
        .map_err(|e| e.to_string())
}

fn podman(install: &Install, text: &str) -> std::result::Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    if doc.get("registries").is_some() {
        return Err(
            "a version 1 registries.conf (`[registries.search]`, ...): move it to \
                    version 2 first"
                .into(),
        );
    }
    let mirror = install
        .mirror
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let registries = doc
        .entry("registry")
        .or_insert_with(|| Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
        .ok_or("`registry` is not an array of tables")?;
    let found = registries
        .iter()
        .position(|r| r.get("location").and_then(Item::as_str) == Some("docker.io"));
    let index = match found {
        Some(i) => i,
        None => {
            let mut t = Table::new();
            t.insert("location", value("docker.io"));
            registries.push(t);
            registries.len() - 1
        }
    };
    let hub = registries.get_mut(index).expect("listed");
    let mirrors = hub
        .entry("mirror")
        .or_insert_with(|| Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
        .ok_or("`registry.mirror` is not an array of tables")?;
    if !mirrors
        .iter()
        .any(|m| m.get("location").and_then(Item::as_str) == Some(mirror.as_str()))
    {
        let mut t = Table::new();
        t.insert("location", value(mirror));
        t.insert("insecure", value(install.mirror.starts_with("http://")));
        mirrors.push(t);
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests;
