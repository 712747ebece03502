//! Tests of `http1`.

use std::io::Write as _;

use http_body_util::{Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

type Boxed = BoxBody<Bytes, io::Error>;

fn full(text: &'static str) -> Boxed {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// `/file` answers bytes 2..10 of a file with a FileBody (its body says "wrong" so a test
/// sees which was sent), `/chunks` a body of unknown length, anything else its path.
async fn answer<B>(file: Arc<std::fs::File>, sent: Counter, req: Request<B>) -> Response<Boxed> {
    match req.uri().path() {
        "/file" => Response::builder()
            .extension(FileBody {
                file,
                range: 2..10,
                sent,
            })
            .body(full("wrong!!!"))
            .expect("response"),
        "/chunks" => {
            let frames = futures_util::stream::iter(
                ["ab", "cde"].map(|s| Ok::<_, io::Error>(Frame::data(Bytes::from(s)))),
            );
            Response::new(StreamBody::new(frames).boxed())
        }
        path => {
            let text = format!("{} {path}", req.method());
            Response::new(
                Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed(),
            )
        }
    }
}

/// A server on loopback; returns its address and the file-body counter.
async fn server() -> (std::net::SocketAddr, Counter) {
    let mut f = tempfile::tempfile().expect("temp file");
    f.write_all(b"0123456789abcdef").expect("write");
    let file = Arc::new(f);
    let sent = Counter::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counter = sent.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let (file, sent) = (file.clone(), counter.clone());
            let limits = Limits {
                header_timeout: Some(Duration::from_secs(5)),
                max_head: 4096,
            };
            let simple = {
                let (file, sent) = (file.clone(), sent.clone());
                move |req| answer(file.clone(), sent.clone(), req)
            };
            let hyper = move |io| async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = answer(file.clone(), sent.clone(), req);
                    async move { Ok::<_, std::convert::Infallible>(r.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            };
            tokio::spawn(async move { serve(stream, limits, None, simple, hyper).await });
        }
    });
    (addr, sent)
}

/// Writes `request` and reads until the server closes.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    String::from_utf8(out).expect("text")
}

fn bodies(text: &str) -> Vec<&str> {
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").expect("head").1)
        .collect()
}

#[tokio::test]
async fn keep_alive_file_chunked_head_and_hyper_after() {
    let (addr, sent) = server().await;
    // Pipelined on one connection: a file, a chunked body, a HEAD, then a POST (hyper's from
    // there on), then a GET that hyper answers, closing.
    let text = exchange(
        addr,
        "GET /file HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /file HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\
         GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 5, "{text}");
    let b = bodies(&text);
    assert_eq!(b[0].split("HTTP/1.1").next(), Some("23456789"));
    assert!(text.contains("content-length: 8\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        b[1].starts_with("2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{text}"
    );
    assert_eq!(b[2], "", "HEAD carries no body: {text}");
    assert_eq!(b[3], "POST /post");
    assert_eq!(b[4], "GET /last");
    assert_eq!(sent.get(), 8, "only the GET sent the file");
}

#[tokio::test]
async fn http10_closes_and_bad_heads_go_to_hyper() {
    let (addr, _) = server().await;
    let text = exchange(addr, "GET /a HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("GET /a"), "{text}");
    let text = exchange(addr, "GARBAGE\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let big = format!(
        "GET /{} HTTP/1.1\r\nConnection: close\r\n\r\n",
        "a".repeat(8000)
    );
    let text = exchange(addr, &big).await;
    assert!(
        text.starts_with("HTTP/1.1 "),
        "hyper has the huge head: {text:.40}"
    );
    // A client that goes away between requests just ends the connection.
    let s = TcpStream::connect(addr).await.expect("connect");
    drop(s);
}

#[tokio::test]
async fn reqwest_reuses_the_connection() {
    crate::install_crypto_provider();
    let (addr, sent) = server().await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .get(format!("http://{addr}/file"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("body"), "23456789");
        let r = client
            .get(format!("http://{addr}/chunks"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("body"), "abcde");
    }
    assert_eq!(sent.get(), 24);
}

proptest::proptest! {
    /// Any bytes as a request head: no panic; a head taken here is complete and no longer than
    /// what was read.
    #[test]
    fn any_bytes_parse_or_go_to_hyper(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        if let Ok(Some(Head::Request(_, len))) = parse(&bytes) {
            proptest::prop_assert!(len <= bytes.len());
        }
    }

    /// Heads made of request-line and header characters, the shapes clients send.
    #[test]
    fn any_request_like_head_parses_or_goes_to_hyper(
        line in "(GET|HEAD|PUT) [ -~]{0,40} HTTP/1\\.[01]",
        headers in proptest::collection::vec("[ -~]{0,30}", 0..8),
    ) {
        let text = format!("{line}\r\n{}\r\n", headers.iter().map(|h| format!("{h}\r\n")).collect::<String>());
        let _ = parse(text.as_bytes());
    }
}
