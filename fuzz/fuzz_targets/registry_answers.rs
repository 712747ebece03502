//! What a registry answers a seed: `WWW-Authenticate` challenges and manifests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        shoal_seed::fuzz::www_authenticate(text);
    }
    shoal_seed::fuzz::manifest(data);
});
