//! A task as a member names it: its id, its URL (which must hash to the id) and id options.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: (&str, &str, &[u8])| {
    let (id, url, options) = input;
    shoal_p2p::fuzz::task(id, url, options);
});
