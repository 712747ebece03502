//! A client's `/v2/` path and `Range` header on the registry mirror (port 4001).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: (&str, &[u8], u64)| {
    let (path, range, len) = input;
    shoal_mirror::fuzz::request(path, range, len);
});
