//! A client that connects and never reads must not delay anyone, and is disconnected.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::{RawStream, Sse, TestServer, WAIT, stalled_client};

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

/// More connections with a backlog than there are bulk write slots: they take turns, and every
/// one of them still gets every large message, whole and in order (and the stalled ones do not
/// hold a slot while their socket is full).
#[tokio::test]
async fn many_backlogged_connections_take_turns_and_each_gets_everything() {
    const STALLED: usize = 40;
    // (more than the 32 bulk write slots)
    const READERS: usize = 100;
    const LINES: usize = 20_000;
    let server = TestServer::start_with(|c| {
        c.max_body_bytes = 64 * 1024;
        // Room for all three messages: only the turns are under test, not slow consumers.
        c.queue_max_bytes = 8 << 20;
    })
    .await;
    // Stalled clients first: their sockets fill, and they must give their slots back.
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        stalled.push(stalled_client(server.addr, &format!("/v2/sse?username=s{i}")).await);
    }
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, STALLED as f64)
        .await;
    // Fill their sockets and leave each a backlog: ~5.5 MB each, more than the kernel's
    // largest send buffer (4 MiB by default) and the 4 KiB window take.
    let filler = "\n".repeat(65_000);
    for _ in 0..12 {
        assert_eq!(server.post("/v2/broadcast", filler.clone()).await.0, 200);
    }
    let mut readers = Vec::new();
    for i in 0..READERS {
        let path = format!("/v2/sse?username=r{i}");
        readers.push(RawStream::open(server.addr, &path, "").await);
    }
    server
        .wait_metric(
            r#"sse_connections_open{channel="v2"}"#,
            (STALLED + READERS) as f64,
        )
        .await;
    // Each line break becomes a `data:` line of its own: ~140 KB per message on the wire.
    for k in 0..3 {
        let body = format!("{k}{}", "\n".repeat(LINES));
        let (status, _) = server.post("/v2/broadcast", body).await;
        assert_eq!(status, 200);
    }
    let all = futures::future::join_all(readers.iter_mut().map(|r| r.read_messages(3))).await;
    for got in all {
        // (first data line, empty data lines) of each message, in order.
        assert_eq!(
            got,
            vec![
                ("0".to_owned(), LINES),
                ("1".to_owned(), LINES),
                ("2".to_owned(), LINES)
            ]
        );
    }
    drop(stalled);
    server.stop().await;
}
