//! The lean SSE path (`src/net/lean.rs`): same responses as the router through hyper, chunked
//! framing a real parser accepts, replay, keep-alive after a lean response, and every request
//! it does not take (pipelined, with a body, split, other methods) still served by hyper.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{RawStream, Sse, TestServer, WAIT};

const ORIGIN: &str = "http://app.example";

async fn server() -> TestServer {
    TestServer::start_with(|c| c.cors_origin = vec![ORIGIN.to_owned()]).await
}

/// The header names of a response head (lower case, sorted), without its status line and
/// `date` value.
fn header_names(head: &str) -> Vec<String> {
    let mut names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_lowercase()))
        .collect();
    names.sort();
    names
}

/// Reads from `stream` until `want` appears or [`WAIT`] passes; returns all that was read.
async fn read_until(stream: &mut TcpStream, want: &str) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(want) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// `http_requests_rejected_total{status="400"}` (absent while 0).
async fn rejected_400(server: &TestServer) -> f64 {
    server
        .metric_or_zero(r#"http_requests_rejected_total{status="400"}"#)
        .await
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

#[tokio::test]
async fn lean_stream_has_the_routers_headers_and_chunked_frames() {
    let server = server().await;
    let origin = format!("Origin: {ORIGIN}\r\n");
    let mut lean = RawStream::open(server.addr, "/v2/sse?username=l", &origin).await;
    // `Content-Length: 0` sends the same request to hyper.
    let hyper_headers = format!("{origin}Content-Length: 0\r\n");
    let mut hyper = RawStream::open(server.addr, "/v2/sse?username=l", &hyper_headers).await;
    let head = lean.head.to_lowercase();
    for line in [
        "http/1.1 200 ok\r\n",
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache\r\n",
        "x-accel-buffering: no\r\n",
        "access-control-allow-origin: http://app.example\r\n",
        "vary: origin",
        "transfer-encoding: chunked\r\n",
        "date: ",
    ] {
        assert!(head.contains(line), "{line:?} missing in {head}");
    }
    assert_eq!(header_names(&lean.head), header_names(&hyper.head));

    let (_, body) = server.post("/v2/message?username=l", "a\nb").await;
    let id = body["id"].as_str().unwrap().to_owned();
    let expected = format!("retry: 2000\n: connected\n\nid: {id}\ndata: a\ndata: b\n\n");
    assert_eq!(lean.read_for(Duration::from_millis(300)).await, expected);
    assert_eq!(hyper.read_for(Duration::from_millis(300)).await, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_real_parser_reads_lean_streams_with_last_event_id_header_and_query() {
    let server = server().await;
    let mut ids = Vec::new();
    let first = Sse::open(&server.url("/v3/sse?username=p"), None).await;
    for i in 0..4 {
        let (_, body) = server.post("/v3/message?username=p", format!("m{i}")).await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    drop(first);
    let mut by_header = Sse::open(&server.url("/v3/sse?username=p"), Some(&ids[1])).await;
    let query = format!("/v3/sse?username=p&lastEventId={}", ids[2]);
    let mut by_query = Sse::open(&server.url(&query), None).await;
    for (event, want) in [
        (by_header.next().await, "m2"),
        (by_header.next().await, "m3"),
    ] {
        assert_eq!(event.data, want);
    }
    assert_eq!(by_query.next().await.data, "m3");
    // Many queued frames at once are written together and still parse one by one.
    for i in 0..200 {
        server
            .post("/v3/message?username=p", format!("burst{i}"))
            .await;
    }
    for i in 0..200 {
        assert_eq!(by_header.next().await.data, format!("burst{i}"));
        assert_eq!(by_query.next().await.data, format!("burst{i}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn lean_errors_are_the_routers_and_the_connection_stays_open() {
    let server = server().await;
    let before = rejected_400(&server).await;
    let mut stream = raw(
        server.addr,
        b"GET /v2/sse?username=a:b HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let reply = read_until(&mut stream, "}").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(
        reply.contains("content-type: application/json\r\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with(
            "\r\n\r\n{\"error\":\"username may contain only letters, digits, '-', '_', '.' and '@'\"}"
        ),
        "{reply}"
    );
    let after = rejected_400(&server).await;
    assert_eq!(after, before + 1.0);
    // Keep-alive: the next request on the same connection is served (lean again).
    stream
        .write_all(b"GET /v4/sse?user_id=nope HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until(&mut stream, "UUID\"}").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    stream
        .write_all(b"GET /v2/sse?username=ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until(&mut stream, ": connected").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn requests_the_lean_path_does_not_take_are_served_by_hyper() {
    let server = server().await;
    // Pipelined: both answered, in order.
    let mut s = raw(
        server.addr,
        b"GET /v2/sse?username= HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let reply = read_until(&mut s, "\"ok\"").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("must not be empty"), "{reply}");
    assert!(reply.contains("HTTP/1.1 200 OK"), "{reply}");

    // A head split over two writes.
    let mut s = raw(server.addr, b"GET /v2/sse?username=split HT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"TP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until(&mut s, ": connected").await;
    assert!(reply.contains("transfer-encoding: chunked"), "{reply}");

    // HTTP/1.0 and `Connection: close`: hyper's connection handling.
    let mut s = raw(server.addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let reply = read_until(&mut s, "\"ok\"").await;
    assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
    let mut s = raw(
        server.addr,
        b"GET /v2/sse?username=c HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let reply = read_until(&mut s, ": connected").await;
    assert!(reply.contains("connection: close\r\n"), "{reply}");

    // Other methods and a body.
    let mut s = raw(
        server.addr,
        b"POST /v2/sse?username=x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert!(read_until(&mut s, "\r\n").await.starts_with("HTTP/1.1 405"));
    let mut s = raw(
        server.addr,
        format!("OPTIONS /v2/sse HTTP/1.1\r\nOrigin: {ORIGIN}\r\nAccess-Control-Request-Method: GET\r\n\r\n").as_bytes(),
    )
    .await;
    let reply = read_until(&mut s, "\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("access-control-allow-origin: http://app.example"),
        "{reply}"
    );

    // Garbage: hyper's 400, then the connection closes.
    let mut s = raw(server.addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n").await;
    let reply = read_until(&mut s, "never").await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_is_unregistered_and_shutdown_ends_lean_streams() {
    let server = server().await;
    let gone = RawStream::open(server.addr, "/v2/sse?username=g", "").await;
    let mut stays = RawStream::open(server.addr, "/v2/sse?username=g", "").await;
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 2.0)
        .await;
    drop(gone);
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 1.0)
        .await;
    let mut server = server;
    let stop = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    // The stream ends with the terminating chunk (read_for stops at it) well before WAIT.
    let started = std::time::Instant::now();
    let body = stays.read_for(WAIT).await;
    assert!(started.elapsed() < WAIT, "stream did not end");
    assert!(body.starts_with("retry: 2000\n"), "{body}");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_stream_client_blasting_bytes_is_disconnected_and_others_stay_fast() {
    let server = server().await;
    let mut other = Sse::open(&server.url("/v2/sse?username=calm"), None).await;
    let mut blaster = raw(
        server.addr,
        b"GET /v2/sse?username=blast HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let head = read_until(&mut blaster, ": connected").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let (mut reader, mut writer) = blaster.into_split();
    // Writes at most 16 MiB (bounded), stopping at the first error (the server closed).
    let blast = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..256 {
            if writer.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    // The connection is closed by the server: reading reaches EOF or an error in time.
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the blasting client was not disconnected");
    assert!(
        tokio::time::timeout(WAIT, blast).await.unwrap().unwrap(),
        "the server took 16 MiB from a stream client"
    );
    // Others stay fast.
    let t = std::time::Instant::now();
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    server.post("/v2/message?username=calm", "hi").await;
    assert_eq!(other.next().await.data, "hi");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    server.stop().await;
}

/// The race of issue 10: a lean error answer on a kept-alive connection, and the next request
/// sent 10–25 µs after the first (it lost the second request in 2 of 600 tries). Two thousand
/// tries, each answered twice.
#[tokio::test]
async fn a_request_pipelined_behind_a_lean_answer_is_always_answered() {
    let server = server().await;
    for attempt in 0..2000u32 {
        let mut stream = raw(
            server.addr,
            b"GET /v2/sse?username=bad:name HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
        // 10 to 25 microseconds, spun: a timer cannot wait that little.
        let gap = Duration::from_micros(10 + u64::from(attempt % 16));
        let start = std::time::Instant::now();
        while start.elapsed() < gap {
            std::hint::spin_loop();
        }
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let reply = read_until(&mut stream, "{\"status\":\"ok\"}").await;
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "try {attempt}: {reply}"
        );
        assert!(
            reply.ends_with("{\"status\":\"ok\"}"),
            "try {attempt}: the pipelined request got no answer: {reply}"
        );
    }
    server.stop().await;
}
