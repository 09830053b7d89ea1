//! Connection and publish limits, the write timeout and the lingering close (issue 10): every
//! limit tried as a client that wants to exceed it would, and the answer it gets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ChildServer, RawStream, Sse, TestServer, WAIT, client, json_of, metric_in};

/// `GET url` answered with a refusal: its status, `Retry-After` and JSON body.
async fn refused(url: &str, forwarded_for: Option<&str>) -> (u16, u64, serde_json::Value) {
    let mut request = client().get(url);
    if let Some(ip) = forwarded_for {
        request = request.header("X-Forwarded-For", ip);
    }
    let response = request.send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {}", response.status()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(response.headers()["connection"], "close");
    let (status, body) = json_of(response).await;
    (status, retry_after, body)
}

async fn sse_with(url: &str, forwarded_for: &str) -> reqwest::Response {
    let response = client()
        .get(url)
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{url} for {forwarded_for}");
    response
}

#[tokio::test]
async fn a_full_server_refuses_streams_with_503_and_keeps_serving_the_rest() {
    let server = TestServer::start_with(|c| c.max_connections = Some(3)).await;
    let mut streams = vec![
        Sse::open(&server.url("/v2/sse?username=a"), None).await,
        Sse::open(&server.url("/v3/sse?username=b"), None).await,
        Sse::open(&server.url("/v1/sse?username=c"), None).await,
    ];
    for path in [
        "/v2/sse?username=d",
        "/v3/sse?username=a",
        "/v1/sse?username=e",
        "/v4/sse?user_id=6f1c1e4e-8a9a-4b8e-9a55-5b1c0c0f6e01",
    ] {
        let (status, retry_after, body) = refused(&server.url(path), None).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(body["reason"], "max_connections");
        assert_eq!(body["retryAfter"], retry_after);
        assert!(
            body["error"].as_str().unwrap().contains("3 streams"),
            "{body}"
        );
    }
    // Everything but streams still works: health, metrics, publishing to the open streams.
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = server.post("/v2/message?username=a", "still here").await;
    assert_eq!(status, 200);
    assert_eq!(streams[0].next().await.data, "still here");
    assert_eq!(
        server
            .metric(r#"sse_refused_total{reason="max_connections"}"#)
            .await,
        4.0
    );

    // A place that is given back can be taken again.
    streams.remove(0);
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 0.0)
        .await;
    let mut again = Sse::open(&server.url("/v2/sse?username=d"), None).await;
    server.post("/v2/message?username=d", "welcome").await;
    assert_eq!(again.next().await.data, "welcome");
    server.stop().await;
}

#[tokio::test]
async fn one_user_over_its_share_gets_429_and_others_are_not_affected() {
    let server = TestServer::start_with(|c| c.max_connections_per_user = Some(2)).await;
    let url = server.url("/v2/sse?username=greedy");
    let _tabs = [Sse::open(&url, None).await, Sse::open(&url, None).await];
    let (status, retry_after, body) = refused(&url, None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("max_connections_per_user"))
    );
    assert!(retry_after >= 1);
    // The same name on another channel, and other users, are separate budgets.
    let _v3 = Sse::open(&server.url("/v3/sse?username=greedy"), None).await;
    let _other = Sse::open(&server.url("/v2/sse?username=modest"), None).await;
    // The refused request took no place: the user's two tabs still get every message.
    let (_, body) = server.post("/v2/message?username=greedy", "x").await;
    assert_eq!(body["delivered"], 2);
    server.stop().await;
}

#[tokio::test]
async fn per_address_limits_trust_forwarded_for_only_from_trusted_proxies() {
    // Behind a trusted proxy (the test itself, on 127.0.0.1), X-Forwarded-For names the client.
    let server = TestServer::start_with(|c| {
        c.max_connections_per_ip = Some(2);
        c.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let url = server.url("/v2/sse?username=u");
    let _held = [
        sse_with(&url, "203.0.113.5").await,
        // The right-most address not a trusted proxy is the client; what it claims is ignored.
        sse_with(&url, "198.51.100.77, 203.0.113.5, 127.0.0.1").await,
    ];
    let (status, _, body) = refused(&url, Some("203.0.113.5")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("max_connections_per_ip"))
    );
    // Another client behind the same proxy is not affected; IPv6 counts by /64.
    let _other = sse_with(&url, "203.0.113.6").await;
    let _v6 = [
        sse_with(&url, "2001:db8:1:2::1").await,
        sse_with(&url, "2001:db8:1:2:ffff::9").await,
    ];
    let (status, _, _) = refused(&url, Some("2001:db8:1:2::abcd")).await;
    assert_eq!(status, 429);
    let _v6_other = sse_with(&url, "2001:db8:1:3::1").await;
    server.stop().await;

    // Without --trusted-proxy the header is ignored: every request here is 127.0.0.1.
    let server = TestServer::start_with(|c| c.max_connections_per_ip = Some(2)).await;
    let url = server.url("/v2/sse?username=u");
    let _held = [
        sse_with(&url, "203.0.113.1").await,
        sse_with(&url, "203.0.113.2").await,
    ];
    let (status, _, _) = refused(&url, Some("203.0.113.3")).await;
    assert_eq!(status, 429);
    server.stop().await;
}

#[tokio::test]
async fn publishers_over_the_rate_get_429_with_retry_after_reports_included() {
    let server = TestServer::start_with(|c| {
        c.publish_rate = Some(0.5);
        c.publish_burst = Some(3);
    })
    .await;
    let mut tab = Sse::open(&server.url("/v2/sse?username=r"), None).await;
    for i in 0..3 {
        let (status, _) = server.post("/v2/message?username=r", format!("m{i}")).await;
        assert_eq!(status, 200);
    }
    let response = client()
        .post(server.url("/v2/message?username=r"))
        .body("one too many")
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("publish_rate"))
    );
    // One token comes back every 2 s.
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    for i in 0..3 {
        assert_eq!(tab.next().await.data, format!("m{i}"));
    }
    // The refused message was not delivered, and broadcasts and reports draw on the same budget.
    tab.expect_silence(Duration::from_millis(200)).await;
    let (status, _) = server.post("/v2/broadcast", "all").await;
    assert_eq!(status, 429);
    let (status, body) = server
        .post(
            "/v4/new/report?user_id=6f1c1e4e-8a9a-4b8e-9a55-5b1c0c0f6e02",
            "",
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("publish_rate"))
    );
    let (_, list) = server
        .get_json("/v4/reports?user_id=6f1c1e4e-8a9a-4b8e-9a55-5b1c0c0f6e02")
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // After the wait it asks for, the publisher may post again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _) = server.post("/v2/message?username=r", "later").await;
    assert_eq!(status, 200);
    assert_eq!(tab.next().await.data, "later");
    server.stop().await;
}

/// The default `--max-connections` comes from the open-file limit and leaves a reserve, so an
/// idle-connection flood is refused with 503 while `/healthz` and POSTs keep working.
#[tokio::test]
async fn the_default_connection_limit_follows_the_open_file_limit() {
    // 300 open files: 64 kept in reserve, so 236 streams.
    let server = ChildServer::start_with_open_files(300, &[]).await;
    let mut streams = Vec::new();
    for i in 0..236 {
        let s = RawStream::open(server.addr, &format!("/v2/sse?username=u{i}"), "").await;
        assert!(s.head.starts_with("HTTP/1.1 200"), "stream {i}: {}", s.head);
        streams.push(s);
    }
    for _ in 0..20 {
        let s = RawStream::open(server.addr, "/v2/sse?username=late", "").await;
        assert!(s.head.starts_with("HTTP/1.1 503"), "{}", s.head);
    }
    let response = client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .post(format!("http://{}/v2/message?username=u7", server.addr))
        .body("hi")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    assert!(
        streams[7]
            .read_for(Duration::from_millis(500))
            .await
            .contains("data: hi")
    );
    drop(streams);
    drop(server);
}

/// Past the open-file reserve, connections are answered with a canned 503 at accept (nothing is
/// read), the server logs nothing per connection and recovers once they close.
#[tokio::test]
async fn connections_beyond_the_file_limit_get_503_at_accept() {
    // 200 open files, of which 32 are kept for the process: at most 168 connections; streams
    // are allowed far beyond that, so the transport's own bound is what answers.
    let server = ChildServer::start_with_open_files(200, &["--max-connections", "10000"]).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(
            format!("GET /v2/sse?username=f{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("no answer")
            .unwrap();
        match &head {
            b"HTTP/1.1 200" => held.push(s),
            b"HTTP/1.1 503" => refused += 1,
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
    }
    assert!(held.len() >= 150, "{} streams", held.len());
    assert!(refused >= 20, "{refused} refused");
    // Once the flood ends, the server answers everything again.
    drop(held);
    let mut counted = None;
    for _ in 0..50 {
        // While the closes are still being noticed, a request may itself get the canned 503
        // (or the connection closed under it): try again.
        let response = client()
            .get(format!("http://{}/metrics", server.addr))
            .send()
            .await;
        if let Ok(response) = response
            && let Ok(text) = response.text().await
        {
            counted = metric_in(&text, "sse_accept_refused_total");
        }
        if counted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted.expect("no /metrics after the flood") >= refused as f64);
    drop(server);
}

#[tokio::test]
async fn a_stream_whose_client_stops_reading_is_closed_after_the_write_timeout() {
    let server = TestServer::start_with(|c| {
        c.write_timeout = Duration::from_secs(1);
        // Queue limits far above what is sent, so only the write timeout can close it.
        c.queue_size = 100_000;
        c.queue_max_bytes = 1 << 30;
    })
    .await;
    let _stalled = crate::support::stalled_client(server.addr, "/v2/sse?username=w").await;
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 1.0)
        .await;
    let chunk = "x".repeat(60_000);
    // Enough to fill the socket buffers on both sides many times over (~12 MB).
    for _ in 0..200 {
        let (status, _) = server.post("/v2/message?username=w", chunk.clone()).await;
        assert_eq!(status, 200);
    }
    server.wait_metric("sse_write_timeouts_total", 1.0).await;
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 0.0)
        .await;
    assert_eq!(
        server
            .metric_or_zero("sse_slow_consumer_disconnects_total")
            .await,
        0.0
    );
    server.stop().await;
}

/// A 10 MB body sent the way Node's `fetch` sends it (all of it, before reading) gets the 413
/// and its JSON: the server reads and drops the rest instead of resetting the connection.
#[tokio::test]
async fn an_early_413_reaches_a_client_that_keeps_sending() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        let mut socket = TcpStream::connect(server.addr).await.unwrap();
        let size = 10 * 1024 * 1024;
        socket
            .write_all(
                format!(
                    "POST /v2/message?username=big HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (mut reader, mut writer) = socket.into_split();
        let send = tokio::spawn(async move {
            let block = vec![b'a'; 64 * 1024];
            for _ in 0..size / block.len() {
                writer.write_all(&block).await?;
            }
            writer.flush().await?;
            writer.shutdown().await
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer))
            .await
            .expect("the connection was not closed")
            .expect("the connection was reset");
        let sent = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
        assert!(sent.is_ok(), "sending the body failed: {sent:?}");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#""error""#), "{text}");
    }
    server.stop().await;
}
