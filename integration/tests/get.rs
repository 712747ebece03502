//! `shoal get` without a daemon: bytes, caching, resume, redirects, errors.

use std::path::Path;
use std::time::Duration;

use shoal_integration::origin::TestOrigin;
use shoal_integration::process::{ChildGuard, get, run, wait_until};
use shoal_integration::{random_bytes, sha256};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn identical_bytes_then_a_cache_hit_that_costs_the_origin_nothing() {
    let data = random_bytes(40 * MIB + 12345);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    let first = run(get(&dir.path().join("data"), &origin.url("/f"), &out)).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let sent = origin.bytes_sent();
    // Everything once, plus the one byte of the stat request.
    assert_eq!(sent, data.len() as u64 + 1);

    let out2 = dir.path().join("out2");
    let second = run(get(&dir.path().join("data"), &origin.url("/f"), &out2)).await;
    assert!(second.status.success());
    assert_eq!(std::fs::read(&out2).unwrap(), data);
    assert_eq!(
        origin.bytes_sent(),
        sent,
        "a cached get must not touch the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_without_range_support_is_one_stream() {
    let data = random_bytes(9 * MIB + 7);
    let origin = TestOrigin::builder()
        .file("/f", data.clone())
        .no_ranges()
        .start()
        .await;
    get_checked(&origin, "/f", &data).await;
    let gets = origin
        .seen()
        .iter()
        .filter(|s| s.method == http::Method::GET)
        .count();
    assert_eq!(
        gets, 2,
        "the stat's GET answered 200 (its body abandoned), then one stream"
    );
}

/// `shoal get` of `path` from `origin` into a fresh directory: it succeeds with `data`.
async fn get_checked(origin: &TestOrigin, path: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let res = run(get(&dir.path().join("data"), &origin.url(path), &out)).await;
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// The content ranges the origin was asked for, besides the stat's first byte.
fn ranges_asked(origin: &TestOrigin) -> Vec<String> {
    origin
        .seen()
        .iter()
        .filter(|s| s.method == http::Method::GET)
        .filter_map(|s| s.headers.get(http::header::RANGE))
        .map(|r| r.to_str().unwrap().to_owned())
        .filter(|r| r != "bytes=0-0")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_origin_is_read_in_one_request_in_order_not_a_request_per_piece() {
    let data = random_bytes(40 * MIB + 12345);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    get_checked(&origin, "/f", &data).await;
    assert_eq!(
        ranges_asked(&origin),
        [format!("bytes=0-{}", data.len() - 1)],
        "41 pieces in one range request"
    );
    assert_eq!(origin.bytes_sent(), data.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_connection_that_slows_down_gets_a_second_one_beside_it() {
    let data = random_bytes(24 * MIB);
    // Every response: 3 MiB at once, then 256 KiB/s (the rest of one stream alone: 84 s).
    let origin = TestOrigin::builder()
        .file("/f", data.clone())
        .slow_after(3 * MIB as u64, 256 << 10)
        .start()
        .await;
    get_checked(&origin, "/f", &data).await;
    let ranges = ranges_asked(&origin);
    assert!(
        ranges.len() >= 3,
        "the slow stream split, and split again: {ranges:?}"
    );
    assert_eq!(ranges[0], format!("bytes=0-{}", data.len() - 1));
    // A cut stream stops at a piece's end; what was in flight past it is all it wastes.
    assert!(
        origin.bytes_sent() < data.len() as u64 + (2 * MIB * ranges.len()) as u64,
        "{} bytes sent for {}",
        origin.bytes_sent(),
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_right_digest() {
    let data = random_bytes(3 * MIB);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = get(&dir.path().join("data"), &origin.url("/f"), Path::new("-"));
    cmd.arg("--digest").arg(sha256(&data));
    let res = run(cmd).await;
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(res.stdout, data);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digest_fails_and_leaves_no_output() {
    let data = random_bytes(5 * MIB);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = get(&dir.path().join("data"), &origin.url("/f"), &out);
    cmd.arg("--digest").arg(sha256(b"something else"));
    let res = run(cmd).await;
    assert_eq!(
        res.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(String::from_utf8_lossy(&res.stderr).contains("expected sha256:"));
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("data")],
        "no temp files beside the output"
    );

    // The content was not cached under a wrong name: the right digest fetches and succeeds.
    let mut cmd = get(&dir.path().join("data"), &origin.url("/f"), &out);
    cmd.arg("--digest").arg(sha256(&data));
    assert!(run(cmd).await.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_errors_are_shown_as_such() {
    let origin = TestOrigin::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let res = run(get(&dir.path().join("data"), &origin.url("/missing"), &out)).await;
    assert_eq!(res.status.code(), Some(8));
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("origin answered 404"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(!out.exists());

    // Nothing listens: a network failure, exit 4, after the retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let res = run(get(
        &dir.path().join("data"),
        &format!("http://{closed}/f"),
        &out,
    ))
    .await;
    assert_eq!(
        res.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_keep_credentials_on_the_same_host_and_drop_them_across_hosts() {
    let data = random_bytes(MIB);
    let other = TestOrigin::builder()
        .ip("127.0.0.2".parse().unwrap())
        .file("/real", data.clone())
        .start()
        .await;
    let origin = TestOrigin::builder()
        .file("/real", data.clone())
        .redirect("/same", "/real")
        .redirect("/cross", &other.url("/real"))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    for path in ["/same", "/cross"] {
        let out = dir.path().join(&path[1..]);
        let mut cmd = get(&dir.path().join("data"), &origin.url(path), &out);
        cmd.args([
            "--header",
            "Authorization: Bearer s3cr3t",
            "--header",
            "Cookie: c=1",
            "--header",
            "X-Trace: keep",
        ]);
        let res = run(cmd).await;
        assert!(
            res.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
    let at_origin: Vec<_> = origin
        .seen()
        .into_iter()
        .filter(|s| s.path == "/real")
        .collect();
    assert!(!at_origin.is_empty());
    for s in &at_origin {
        assert_eq!(
            s.headers["authorization"], "Bearer s3cr3t",
            "same-host redirect keeps credentials"
        );
    }
    let at_other = other.seen();
    assert!(!at_other.is_empty());
    for s in &at_other {
        assert!(
            s.headers.get("authorization").is_none(),
            "cross-host redirect must drop Authorization"
        );
        assert!(
            s.headers.get("cookie").is_none(),
            "cross-host redirect must drop Cookie"
        );
        assert_eq!(s.headers["x-trace"], "keep", "other headers pass through");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_download_then_resume_fetches_only_what_was_missing() {
    let size = 64 * MIB;
    let data = random_bytes(size);
    // 32 MiB/s over all connections: about two seconds for the whole file.
    let origin = TestOrigin::builder()
        .file("/f", data.clone())
        .rate(32 * MIB as u64)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (data_dir, out) = (dir.path().join("data"), dir.path().join("out"));

    let mut child = ChildGuard::spawn(get(&data_dir, &origin.url("/f"), &out));
    // Pieces (1 MiB here) run eight at once. Kill at 85 % sent: well after the first half is
    // recorded (socket buffers hold a few MiB the client has not read yet), and before the end.
    wait_until(Duration::from_secs(60), "85% of the file sent", || {
        origin.bytes_sent() >= (size as u64) * 85 / 100
    })
    .await;
    child.kill9();
    assert!(!out.exists(), "no output before the download completes");
    let first_run = origin.bytes_sent();

    let res = run(get(&data_dir, &origin.url("/f"), &out)).await;
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "resumed content is exact"
    );
    let second_run = origin.bytes_sent() - first_run;
    // At least the first half (32 MiB) was recorded before the kill.
    assert!(
        second_run <= (size - 32 * MIB) as u64 + 1,
        "resume fetched {second_run} bytes of {size}"
    );
}

/// Issue 13 (4): an origin (or whoever a client names as one) claiming ~2^58 bytes used to make
/// the piece count overflow and panic the download. It is the origin's fault, told as such.
#[tokio::test(flavor = "multi_thread")]
async fn an_origin_claiming_an_impossible_length_is_refused_with_a_clear_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/288230376151711744\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let url = format!("http://{addr}/huge");
    let res = run(get(&dir.path().join("data"), &url, &out)).await;
    server.abort();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("content length"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}
