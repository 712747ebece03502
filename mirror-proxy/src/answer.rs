//! Answering a GET from a swarm task: whether the task's upstreams vouch for the client, the
//! status and headers (200, or 206 for a `Range`), and the bytes as pieces are verified, from
//! the task file when it is complete; if this host fails the download after the answer began,
//! the upstream sends the rest.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::StreamBody;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Frame;
use shoal_p2p::DownloadRequest;
use shoal_p2p::http1::FileBody;
use shoal_p2p::origin::upstream_of;
use shoal_p2p::proto::Source;
use url::Url;

use crate::error::{Body, BoxError, Error};
use crate::proxy::{Ctx, passthrough, upstream_headers};

/// Which upstream vouches for a task's content, to a client its origin just answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vouch {
    /// The task's id is its URL's: the origin the client named is the content's.
    Url,
    /// A blob, whose id is only its digest: every upstream the content came from must be the
    /// client's registry, or have served it with no credentials (see [`vouched`]).
    Sources,
}

/// Whether a client that `upstream` (its registry) serves may have content that came from
/// `sources`: each of them is that registry, or served the content with no credentials (it is
/// public). A registry the client names for the first time vouches for nothing that came from
/// elsewhere; content from nowhere known goes to nobody.
pub(crate) fn vouched(sources: &[Source], upstream: &str) -> bool {
    !sources.is_empty()
        && sources
            .iter()
            .all(|s| s.anonymous || s.upstream == upstream)
}

/// Answers a GET from a task: 200, or 206 for a `Range`, bytes flowing as pieces are verified.
/// Content its upstreams do not vouch for to this client is the upstream's to answer.
pub(crate) async fn serve_task(
    ctx: &Ctx,
    req: DownloadRequest,
    parts: &Parts,
    extra: HeaderMap,
    vouch: Vouch,
) -> Response<Body> {
    let task = req.task_id();
    let url = req.origin.url.clone();
    let reading = match ctx.downloader.read(req).await {
        Ok(r) => r,
        Err(e) if matches!(*e, shoal_p2p::Error::Busy { .. }) => {
            // As many downloads as may run: this client is served as if there were no swarm.
            tracing::debug!(%task, "background downloads all busy; the upstream answers");
            return passthrough(ctx, url, parts.clone(), None).await;
        }
        Err(e) if e.fault() == shoal_p2p::Fault::Local => {
            // This host cannot hold the task (its disk, say): the upstream answers.
            tracing::warn!(%task, error = %e, "the task cannot be downloaded here; the upstream answers");
            return passthrough(ctx, url, parts.clone(), None).await;
        }
        Err(e) => return Error::Task(e).into_response(),
    };
    if vouch == Vouch::Sources && !vouched(&reading.sources, &upstream_of(&url)) {
        tracing::info!(%task, upstream = upstream_of(&url), "the content came from elsewhere; the client's registry answers");
        return passthrough(ctx, url, parts.clone(), None).await;
    }
    let len = reading.content_length();
    let span = match parse_range(parts.headers.get(header::RANGE), len) {
        Ok(span) => span,
        Err(reason) => return Error::RangeNotSatisfiable { reason, len }.into_response(),
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-dragonfly-task-id", task.as_str())
        .header("docker-distribution-api-version", "registry/2.0");
    let range = match span {
        Some(r) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            r
        }
        None => 0..len,
    };
    builder = builder.header(header::CONTENT_LENGTH, range.end - range.start);
    if let Some(h) = builder.headers_mut() {
        h.extend(extra);
    }
    let served = ctx.metrics.served_bytes.clone();
    // A complete task's bytes go out straight from its file on plain connections.
    let file = if reading.complete {
        ctx.downloader.store().reader(&task).ok()
    } else {
        None
    };
    let mut response = builder;
    if let Some(file) = file {
        response = response.extension(FileBody {
            file: Arc::new(file),
            range: range.clone(),
            sent: served.clone(),
        });
    }
    // The stream starts at the first poll: not at all when the file is sent instead.
    let rest = Rest {
        client: ctx.client.clone(),
        url,
        headers: upstream_headers(&parts.headers),
    };
    let start = Phase::Start(Box::new((reading, range.clone())), rest);
    let frames = futures_util::stream::unfold((start, range.start, range.end), move |state| {
        let served = served.clone();
        async move {
            let (mut phase, mut pos, end) = state;
            loop {
                phase = match phase {
                    Phase::Start(started, rest) => {
                        let (reading, range) = *started;
                        Phase::Task(reading.stream(range), rest)
                    }
                    Phase::Task(mut rx, rest) => match rx.recv().await {
                        Some(Ok(b)) => {
                            served.inc_by(b.len() as u64);
                            pos += b.len() as u64;
                            return Some((Ok(Frame::data(b)), (Phase::Task(rx, rest), pos, end)));
                        }
                        Some(Err(e)) if pos < end => {
                            // This host failed the download (its disk, say): the upstream sends
                            // the rest, as it would have without the swarm.
                            tracing::warn!(error = %e, at = pos, "the download failed mid-answer; the upstream sends the rest");
                            match rest.open(pos..end).await {
                                Ok(body) => Phase::Upstream(Box::pin(body)),
                                Err(e) => return Some((Err(e), (Phase::Done, pos, end))),
                            }
                        }
                        Some(Err(e)) => return Some((Err(e.into()), (Phase::Done, pos, end))),
                        None => return None,
                    },
                    Phase::Upstream(mut body) => {
                        return match body.next().await {
                            Some(Ok(b)) => {
                                pos += b.len() as u64;
                                Some((Ok(Frame::data(b)), (Phase::Upstream(body), pos, end)))
                            }
                            Some(Err(e)) => Some((Err(e.into()), (Phase::Done, pos, end))),
                            None => None,
                        };
                    }
                    Phase::Done => return None,
                };
            }
        }
    });
    response
        .body(UnsyncBoxBody::new(StreamBody::new(frames)))
        .expect("valid response")
}

/// Where an answer's bytes come from, in turn.
enum Phase {
    /// Not polled yet.
    Start(Box<(shoal_p2p::Reading, Range<u64>)>, Rest),
    /// The task, as its pieces are verified.
    Task(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>, Rest),
    /// The rest from the upstream, the download having failed.
    Upstream(std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>),
    Done,
}

/// How to ask the upstream for the rest of an answer: as the client asked, with a `Range`.
struct Rest {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
}

impl Rest {
    /// The bytes `range` of the content from the upstream: a 206 for exactly that range.
    async fn open(
        &self,
        range: Range<u64>,
    ) -> Result<impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + use<>, BoxError>
    {
        let resp = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .header(
                header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .send()
            .await?;
        let expected = format!("bytes {}-{}/", range.start, range.end - 1);
        let exact = resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&expected));
        if !exact {
            return Err(format!("the upstream answered {} for the rest", resp.status()).into());
        }
        Ok(resp.bytes_stream())
    }
}

/// `Range: bytes=…` against a content of `len` bytes, as RFC 9110 §14 has it: one range (`a-b`,
/// `a-`, `-n`) is served; a range unit other than bytes, several ranges, or a malformed
/// specifier are ignored (`None`: the whole content, 200); a range that starts past the end (or
/// a zero-length suffix) is unsatisfiable: the reason, for a 416.
pub(crate) fn parse_range(
    value: Option<&HeaderValue>,
    len: u64,
) -> Result<Option<Range<u64>>, String> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let Some((a, b)) = spec.trim().split_once('-').filter(|_| !spec.contains(',')) else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let range = match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(n) => len.saturating_sub(n)..len,
            None => return Ok(None),
        },
        (false, true) => match num(a) {
            Some(a) => a..len,
            None => return Ok(None),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => a..len.min(b.saturating_add(1)),
            _ => return Ok(None),
        },
        (true, true) => return Ok(None),
    };
    if range.start >= range.end {
        return Err(format!(
            "Range {text:?} is outside the {len} bytes of content"
        ));
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<Range<u64>>, String> {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(range("bytes=0-0", 10), Ok(Some(0..1)));
        assert_eq!(range("bytes=2-5", 10), Ok(Some(2..6)));
        assert_eq!(range("bytes=2-50", 10), Ok(Some(2..10)));
        assert_eq!(range("bytes=7-", 10), Ok(Some(7..10)));
        assert_eq!(range("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(range("bytes=-30", 10), Ok(Some(0..10)));
        // Unsatisfiable: 416.
        for bad in ["bytes=10-", "bytes=99-100", "bytes=-0"] {
            assert!(range(bad, 10).is_err(), "{bad}");
        }
        assert!(range("bytes=0-", 0).is_err());
        // Another unit, several ranges, or a malformed specifier: ignored, the whole content.
        for ignored in [
            "bytes=5-2",
            "bytes=-",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=18446744073709551616-",
            "",
        ] {
            assert_eq!(range(ignored, 10), Ok(None), "{ignored}");
        }
    }

    #[test]
    fn a_blob_is_vouched_for_by_every_registry_it_came_from() {
        let src = |upstream: &str, anonymous| Source {
            upstream: upstream.into(),
            anonymous,
        };
        let r = "https://r.example";
        assert!(!vouched(&[], r), "content from nowhere known");
        assert!(vouched(&[src(r, false)], r));
        assert!(!vouched(&[src(r, false)], "https://evil.example"));
        // Public there: any client's registry will do.
        assert!(vouched(&[src(r, true)], "https://evil.example"));
        // Content from two upstreams: each must vouch.
        let both = [src(r, false), src("https://s.example", true)];
        assert!(vouched(&both, r));
        assert!(!vouched(&both, "https://s.example"));
        let two_private = [src(r, false), src("https://s.example", false)];
        assert!(!vouched(&two_private, r));
    }

    proptest::proptest! {
        /// Any `Range` value against any length: no panic, and a range served is within the
        /// content and not empty.
        #[test]
        fn any_range_header_is_served_within_the_content(v in "[ -~]{0,40}", len in 0u64..1 << 40) {
            if let Ok(value) = HeaderValue::from_str(&v)
                && let Ok(Some(r)) = parse_range(Some(&value), len)
            {
                proptest::prop_assert!(r.start < r.end && r.end <= len, "{:?} of {}", r, len);
            }
        }
    }
}
