//! Stream headers, operations endpoints, CORS, graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::{ChildServer, RawStream, Sse, TestServer, WAIT, client, metric_in};

#[tokio::test]
async fn stream_headers_preamble_and_no_compression() {
    let server = TestServer::start().await;
    let mut raw = RawStream::open(
        server.addr,
        "/v2/sse?username=h",
        "Accept-Encoding: gzip, br, deflate\r\n",
    )
    .await;
    let head = raw.head.to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache\r\n"), "{head}");
    assert!(head.contains("x-accel-buffering: no\r\n"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    // The retry hint and a comment are flushed at once, before any message.
    let first = raw.read_for(Duration::from_millis(300)).await;
    assert_eq!(first, "retry: 2000\n: connected\n\n");
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_comments_on_idle_v2_streams() {
    let server = TestServer::start_with(|c| c.keep_alive = Duration::from_millis(100)).await;
    let mut raw = RawStream::open(server.addr, "/v2/sse?username=k", "").await;
    let body = raw.read_for(Duration::from_millis(700)).await;
    let count = body.matches(": keep-alive-text\n\n").count();
    assert!((2..=7).contains(&count), "{count} keep-alives in {body:?}");
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_cors() {
    let server = TestServer::start().await;
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["kafka"], "disabled");

    let mut s = Sse::open(&server.url("/v2/sse?username=m"), None).await;
    server.post("/v2/message?username=m", "one").await;
    s.next().await;
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for (sample, value) in [
        (r#"sse_connections_open{channel="v2"}"#, 1.0),
        (r#"sse_messages_published_total{channel="v2"}"#, 1.0),
        (r#"sse_messages_delivered_total{channel="v2"}"#, 1.0),
        (r#"sse_slow_consumer_disconnects_total{channel="v2"}"#, 0.0),
    ] {
        assert_eq!(metric_in(&text, sample), Some(value), "{sample}\n{text}");
    }
    assert!(text.contains("# TYPE sse_connections_open gauge"));

    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/v2/message?username=m"),
        )
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let foreign = client()
        .get(server.url("/healthz"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn sigterm_ends_1000_open_streams_promptly_and_exits_zero() {
    for signal in ["TERM", "INT"] {
        let mut server = ChildServer::start(&[]).await;
        let url = format!("http://{}/v2/sse?username=s", server.addr);
        let mut streams = Vec::new();
        for _ in 0..(if signal == "TERM" { 1000 } else { 10 }) {
            // One client per stream: separate TCP connections.
            let response = reqwest::Client::new().get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            streams.push(response);
        }
        let started = Instant::now();
        server.signal(signal);
        let status = tokio::time::timeout(WAIT, server.child.wait())
            .await
            .expect("server did not exit")
            .unwrap();
        let took = started.elapsed();
        assert!(status.success(), "{signal}: exit status {status:?}");
        assert!(
            took < Duration::from_secs(3),
            "{signal}: shutdown took {took:?}"
        );
        // Every stream has ended (no hang) within the bound as well.
        for mut response in streams {
            let end = tokio::time::timeout(WAIT, async {
                while let Ok(Some(_)) = response.chunk().await {}
            })
            .await;
            assert!(end.is_ok(), "a stream did not end");
        }
        eprintln!("SIG{signal}: exited 0 after {took:?}");
    }
}

/// Secure by default: the open server refuses a non-loopback address unless told otherwise.
#[tokio::test]
async fn a_non_loopback_bind_without_access_control_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_server_sent_events"))
            .args(["--bind", "0.0.0.0:0", "--database"])
            .arg(dir.path().join("r.sqlite3"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server did not exit")
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
    assert!(
        !dir.path().join("r.sqlite3").exists(),
        "it opened the store"
    );

    // With the explicit flag it serves (reached here over loopback).
    let mut server = ChildServer::start(&["--bind", "0.0.0.0:0", "--insecure-no-auth"]).await;
    let port = server.addr.port();
    let status = crate::support::client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    server.signal("TERM");
    let exit = tokio::time::timeout(WAIT, server.child.wait()).await;
    assert!(exit.expect("no exit after SIGTERM").unwrap().success());
}

#[tokio::test]
async fn cors_origin_star_allows_any_origin_and_a_bad_origin_exits_2() {
    let mut server = ChildServer::start(&["--cors-origin", "*"]).await;
    let response = client()
        .get(format!("http://{}/healthz", server.addr))
        .header("Origin", "http://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    server.signal("TERM");
    let status = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    assert!(status.success(), "{status:?}");

    for bad in ["not an origin", "http://a/path"] {
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_server_sent_events"))
                .args(["--bind", "127.0.0.1:0", "--cors-origin", bad])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the binary did not exit")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--cors-origin"), "{stderr}");
        assert!(stderr.contains("is not an origin"), "{stderr}");
    }
}
