//! `shoal-mirror`: the registry mirror and HTTP(S) proxy on every node (port 4001).
//!
//! It will own `/v2/` mirror mode (containerd `hosts.toml`, Docker `registry-mirrors`), the forward
//! proxy with CONNECT and HTTPS hijack, auth passthrough, and the turning of blob GETs into swarm
//! tasks. Nothing is implemented yet: this crate exports no API.
