//! A request head on the upload server (port 4000), as any host on the network may send it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_p2p::fuzz::upload_request(data));
