//! `shoal install systemd`: the units of Shoal's four services (`packaging/systemd/`), and the
//! example configs they read where none is yet, pointed at this binary.

use std::path::{Path, PathBuf};

use shoal_snapshotter::install::{OWNED_MARK, Owned};

/// The units as shipped: they name `/usr/local/bin/shoal` and `/etc/shoal/`.
const UNITS: [(&str, &str); 4] = [
    (
        "shoal-daemon.service",
        include_str!("../packaging/systemd/shoal-daemon.service"),
    ),
    (
        "shoal-seed.service",
        include_str!("../packaging/systemd/shoal-seed.service"),
    ),
    (
        "shoal-scheduler.service",
        include_str!("../packaging/systemd/shoal-scheduler.service"),
    ),
    (
        "shoal-snapshotter.service",
        include_str!("../packaging/systemd/shoal-snapshotter.service"),
    ),
];

/// The configs the units read, written only where there is none.
const CONFIGS: [(&str, &str); 2] = [
    ("daemon.toml", include_str!("../packaging/daemon.toml")),
    (
        "scheduler.toml",
        include_str!("../packaging/scheduler.toml"),
    ),
];

/// The files to write: the units in `unit_dir` running `bin` with configs in `etc`.
pub fn files(bin: &Path, unit_dir: &Path, etc: &Path) -> anyhow::Result<Vec<Owned>> {
    let bin = bin
        .to_str()
        .filter(|b| b.starts_with('/') && !b.contains(char::is_whitespace))
        .ok_or_else(|| anyhow::anyhow!("--bin must be an absolute path without spaces"))?;
    let etc_dir = etc
        .to_str()
        .filter(|e| e.starts_with('/') && !e.contains(char::is_whitespace))
        .ok_or_else(|| anyhow::anyhow!("--etc-dir must be an absolute path without spaces"))?
        .trim_end_matches('/');
    let units = UNITS.iter().map(|(name, text)| Owned {
        path: unit_dir.join(name),
        text: text
            .replace("/usr/local/bin/shoal", bin)
            .replace("/etc/shoal/", &format!("{etc_dir}/")),
        keep_existing: false,
    });
    debug_assert!(UNITS.iter().all(|(_, t)| t.starts_with(OWNED_MARK)));
    let configs = CONFIGS.iter().map(|(name, text)| Owned {
        path: etc.join(name),
        text: (*text).to_owned(),
        keep_existing: true,
    });
    Ok(units.chain(configs).collect())
}

/// This binary, where systemd should find it.
pub fn this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
}
