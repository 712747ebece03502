//! A real nginx (Debian's `nginx-light`) as a static file server, for benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, wait_until};

/// nginx serving the files under `root` on a free loopback port; killed when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    _child: ChildGuard,
}

/// Debian's nginx binary.
pub fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: run scripts/setup.sh")
}

/// A whole nginx.conf: one process in the foreground, its pid, logs and temp files under `work`,
/// and `http` (directives and server blocks) in the `http` block.
pub fn config(work: &Path, http: &str) -> String {
    let w = work.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
         client_body_temp_path {w}/tmp/body;\n  proxy_temp_path {w}/tmp/proxy;\n  fastcgi_temp_path {w}/tmp/fcgi;\n\
         uwsgi_temp_path {w}/tmp/uwsgi;\n  scgi_temp_path {w}/tmp/scgi;\n{http}\n}}\n"
    )
}

impl Nginx {
    /// Starts nginx with its config, pid and temp files under `work`.
    pub async fn serve(root: &Path, work: &Path) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(work.join("tmp")).expect("nginx work dir");
        let conf = config(
            work,
            &format!("server {{ listen {addr}; root {}; }}", root.display()),
        );
        let conf_path = work.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(nginx_bin());
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(work)
            .arg("-e")
            .arg(work.join("error.log"));
        let child = ChildGuard::spawn(cmd);
        wait_until(Duration::from_secs(10), "nginx to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
        Nginx {
            addr,
            _child: child,
        }
    }
}
