//! A test cluster's CA, made and used with the `shoal ca` commands.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::shoal;

/// A cluster CA made with `shoal ca init`, from which `shoal ca issue` makes members'
/// credentials, as an operator would.
pub struct ClusterCa {
    pub dir: PathBuf,
}

impl ClusterCa {
    pub fn init(dir: &Path) -> ClusterCa {
        let mut cmd = shoal();
        cmd.arg("ca").arg("init").arg("--dir").arg(dir);
        run_ok(cmd);
        ClusterCa {
            dir: dir.to_owned(),
        }
    }

    /// Writes the credentials of member `id` with `roles` to `out` (`ca.crt`, `host.crt`,
    /// `host.key`): `<data_dir>/cluster` is where a member looks by default.
    pub fn issue(&self, id: &str, roles: &[&str], out: &Path) {
        let mut cmd = shoal();
        cmd.arg("ca")
            .arg("issue")
            .arg("--ca-dir")
            .arg(&self.dir)
            .arg("--id")
            .arg(id)
            .arg("--out")
            .arg(out);
        for role in roles {
            cmd.arg("--role").arg(role);
        }
        run_ok(cmd);
    }
}

impl ClusterCa {
    /// A member's identity for a test that speaks the protocols itself (a member gone bad):
    /// issued with `shoal ca issue` into the CA's directory, and loaded.
    pub fn member(&self, id: &str, roles: &[&str]) -> std::sync::Arc<shoal_p2p::cluster::Cluster> {
        let out = self.dir.join("members").join(id);
        self.issue(id, roles, &out);
        let paths = shoal_p2p::cluster::Paths::in_dir(&out);
        std::sync::Arc::new(shoal_p2p::cluster::Cluster::load(&paths).expect("member loads"))
    }
}

fn run_ok(mut cmd: Command) {
    let out = cmd.output().expect("shoal runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
