//! A node's config file: the daemon's tables and the mirror's `[proxy]`.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = shoal_node::config::DaemonConfig::from_toml(text);
    if let Ok(proxy) = shoal_mirror::config::ProxyConfig::from_daemon_toml(text) {
        let _ = proxy.validate();
    }
});
