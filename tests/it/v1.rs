//! `/v1/sse`: `data: hi!` at once and every interval, keep-alive comments when idle.

use std::time::Duration;

use crate::support::{RawStream, TestServer};

#[tokio::test]
async fn v1_sends_hi_and_keep_alive_comments_like_the_original() {
    let server = TestServer::start_with(|c| {
        c.v1_interval = Duration::from_millis(1000);
        c.v1_keep_alive = Duration::from_millis(300);
    })
    .await;
    let mut raw = RawStream::open(server.addr, "/v1/sse?username=demo", "").await;
    assert!(raw.head.starts_with("HTTP/1.1 200"), "{}", raw.head);
    assert!(
        raw.head
            .to_lowercase()
            .contains("content-type: text/event-stream")
    );
    let body = raw.read_for(Duration::from_millis(2150)).await;
    // hi at 0, keep-alives at 0.3/0.6/0.9, hi at 1.0, keep-alives at 1.3/1.6/1.9, hi at 2.0.
    let expected = "data: hi!\n\n".to_owned()
        + &": keep-alive-text\n\n".repeat(3)
        + "data: hi!\n\n"
        + &": keep-alive-text\n\n".repeat(3)
        + "data: hi!\n\n";
    assert_eq!(body, expected);
    server.stop().await;
}

#[tokio::test]
async fn v1_requires_a_valid_username() {
    let server = TestServer::start().await;
    for path in ["/v1/sse", "/v1/sse?username=", "/v1/sse?username=a:b"] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
    }
    server.stop().await;
}
