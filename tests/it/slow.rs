//! A client that connects and never reads must not delay anyone, and is disconnected.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::{Sse, TestServer, WAIT, stalled_client};

#[tokio::test]
async fn stalled_client_is_dropped_without_delaying_other_tabs_or_users() {
    let server = TestServer::start_with(|c| {
        c.queue_size = 8;
        c.max_body_bytes = 64 * 1024;
    })
    .await;
    // The stalled client: a small receive buffer, a request, and then no reads at all.
    let mut stalled = stalled_client(server.addr, "/v2/sse?username=shared").await;
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 1.0)
        .await;
    let mut same_user = Sse::open(&server.url("/v2/sse?username=shared"), None).await;
    let mut other_user = Sse::open(&server.url("/v2/sse?username=other"), None).await;

    let body = "b".repeat(60 * 1024);
    let mut sent = 0;
    let start = Instant::now();
    while server
        .metric(r#"sse_slow_consumer_disconnects_total{channel="v2"}"#)
        .await
        == 0.0
    {
        assert!(
            sent < 2000 && start.elapsed() < Duration::from_secs(60),
            "stalled client never dropped after {sent} messages"
        );
        let t = Instant::now();
        let (status, _) = server
            .post("/v2/message?username=shared", body.clone())
            .await;
        assert_eq!(status, 200);
        server.post("/v2/message?username=other", "ping").await;
        // Both others receive promptly, every time.
        assert_eq!(same_user.next().await.data.len(), body.len());
        assert_eq!(other_user.next().await.data, "ping");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "delivery took {:?}",
            t.elapsed()
        );
        sent += 1;
    }
    assert!(sent > 8, "dropped after only {sent} messages");
    eprintln!(
        "stalled client dropped after {sent} messages of 60 KiB in {:?}",
        start.elapsed()
    );
    // Only the stalled connection was dropped.
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 2.0)
        .await;
    let (_, reply) = server.post("/v2/message?username=shared", "after").await;
    assert_eq!(reply["delivered"], 1);
    assert_eq!(same_user.next().await.data, "after");
    // Its TCP connection is closed: draining it reaches end of stream.
    let drained = tokio::time::timeout(WAIT * 4, async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was not closed");
    server.stop().await;
}
