//! Messages members send the scheduler, in any order: each record is a kind byte, a length
//! byte and that many bytes of protobuf.
#![no_main]

use prost::Message;
use shoal_p2p::proto::{AnnounceRequest, AttachRequest, ReportRequest, StatsRequest, WatchRequest};
use shoal_scheduler::fuzz::Call;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut calls = Vec::new();
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let call = match kind % 5 {
            0 => AttachRequest::decode(body).map(Call::Attach),
            1 => WatchRequest::decode(body).map(Call::Watch),
            2 => AnnounceRequest::decode(body).map(Call::Announce),
            3 => StatsRequest::decode(body).map(Call::Stats),
            _ => ReportRequest::decode(body).map(Call::Report),
        };
        if let Ok(call) = call {
            calls.push(call);
        }
    }
    shoal_scheduler::fuzz::calls(calls);
});
