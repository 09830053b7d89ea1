//! `/v2` (and `/v3` without Kafka): delivery to every tab, broadcast, replay, channel isolation.

use std::time::Duration;

use serde_json::Value;

use crate::support::{RawStream, Sse, TestServer, client, metric_in};

#[tokio::test]
async fn message_reaches_every_tab_and_closing_one_leaves_the_other() {
    let server = TestServer::start().await;
    let url = server.url("/v2/sse?username=alice");
    let mut tab1 = Sse::open(&url, None).await;
    let mut tab2 = Sse::open(&url, None).await;
    let mut other = Sse::open(&server.url("/v2/sse?username=bob"), None).await;

    let (status, body) = server.post("/v2/message?username=alice", "hello").await;
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 2);
    for tab in [&mut tab1, &mut tab2] {
        let event = tab.next().await;
        assert_eq!(event.data, "hello");
        assert_eq!(event.event, "message");
        assert_eq!(event.id, body["id"].as_str().unwrap());
    }

    drop(tab1);
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 2.0)
        .await;
    let (_, body) = server
        .post("/v2/message?username=alice&event=notification", "second")
        .await;
    assert_eq!(body["delivered"], 1);
    let event = tab2.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("notification", "second")
    );
    other.expect_silence(Duration::from_millis(200)).await;

    // Nobody connected is not an error.
    let (status, body) = server.post("/v2/message?username=nobody", "x").await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(0)));
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_user_of_the_channel_only() {
    let server = TestServer::start().await;
    let mut a = Sse::open(&server.url("/v2/sse?username=a"), None).await;
    let mut b = Sse::open(&server.url("/v2/sse?username=b"), None).await;
    let mut v3 = Sse::open(&server.url("/v3/sse?username=a"), None).await;
    let (status, body) = server.post("/v2/broadcast?event=update", "to all").await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(2)));
    for s in [&mut a, &mut b] {
        let e = s.next().await;
        assert_eq!((e.event.as_str(), e.data.as_str()), ("update", "to all"));
    }
    // A v2 message never reaches v3 and the other way round.
    server.post("/v2/message?username=a", "v2 only").await;
    v3.expect_silence(Duration::from_millis(200)).await;
    let (_, body) = server.post("/v3/message?username=a", "v3 only").await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(v3.next().await.data, "v3 only");
    assert_eq!(a.next().await.data, "v2 only");
    server.stop().await;
}

#[tokio::test]
async fn reconnect_replays_what_was_missed_in_order_or_says_reset() {
    let server = TestServer::start_with(|c| c.history_size = 5).await;
    let url = server.url("/v2/sse?username=r");
    let first = Sse::open(&url, None).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (_, body) = server.post("/v2/message?username=r", format!("m{i}")).await;
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    drop(first);

    // m7 is in the 5-message history (m5..m9): m8 and m9 follow, then live messages.
    let mut resumed = Sse::open(&url, Some(&ids[7])).await;
    assert_eq!(resumed.next().await.data, "m8");
    assert_eq!(resumed.next().await.data, "m9");
    server.post("/v2/message?username=r", "live").await;
    assert_eq!(resumed.next().await.data, "live");

    // The query parameter works for clients that cannot set headers.
    let mut by_query = Sse::open(&format!("{url}&lastEventId={}", ids[8]), None).await;
    assert_eq!(by_query.next().await.data, "m9");
    assert_eq!(by_query.next().await.data, "live");

    // Older than the history, unknown, or from another server run: an explicit reset.
    for stale in [ids[2].as_str(), "nonsense", "1-1", "99999999999999999999-1"] {
        let mut s = Sse::open(&url, Some(stale)).await;
        let reset = s.next().await;
        assert_eq!(reset.event, "reset", "{stale}");
        assert!(reset.data.contains("resync"));
        // The reset carries a position to resume from: using it replays nothing old.
        let mut again = Sse::open(&url, Some(&reset.id)).await;
        server.post("/v2/message?username=r", "after reset").await;
        assert_eq!(again.next().await.data, "after reset");
        assert_eq!(s.next().await.data, "after reset");
    }
    let replays = server.metric(r#"sse_replays_total{channel="v2"}"#).await;
    assert!(replays >= 2.0, "{replays}");
    assert_eq!(
        server.metric(r#"sse_resets_total{channel="v2"}"#).await,
        4.0
    );
    server.stop().await;
}

#[tokio::test]
async fn no_registration_leaks_after_1000_connect_disconnect_cycles() {
    let server = TestServer::start().await;
    let http = client();
    for round in 0..20 {
        let mut opened = Vec::new();
        for i in 0..50 {
            let user = format!("leak{}", (round * 50 + i) % 7);
            let response = http
                .get(server.url(&format!("/v2/sse?username={user}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            opened.push(response);
        }
        drop(opened);
    }
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, 0.0)
        .await;
    server
        .wait_metric("sse_hub_registered_connections", 0.0)
        .await;
    assert_eq!(
        server
            .metric(r#"sse_connections_total{channel="v2"}"#)
            .await,
        1000.0
    );
    // The users' streams still work afterwards.
    let mut s = Sse::open(&server.url("/v2/sse?username=leak3"), None).await;
    let (_, body) = server
        .post("/v2/message?username=leak3", "still here")
        .await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(s.next().await.data, "still here");
    server.stop().await;
}

/// POSTs `body` to `path` with `Idempotency-Key: key`; (status, JSON body).
async fn keyed_post(server: &TestServer, path: &str, key: &str, body: &str) -> (u16, Value) {
    crate::support::post_keyed(&server.url(path), key, body).await
}

/// Issue 11: a retried message (same `Idempotency-Key`) is delivered once and answered with
/// the first answer's id; the key with another message is a 422; 20 identical POSTs at once
/// deliver once; a key is the recipient's, and another channel's message is another request.
#[tokio::test]
async fn a_retried_message_is_delivered_once_with_the_first_id() {
    let server = TestServer::start().await;
    let mut tab = Sse::open(&server.url("/v2/sse?username=alice"), None).await;
    let path = "/v2/message?username=alice";
    let (status, first) = keyed_post(&server, path, "m-1", "hello").await;
    assert_eq!((status, first["delivered"].as_u64()), (200, Some(1)));
    let event = tab.next().await;
    assert_eq!(
        (event.data.as_str(), event.id.as_str()),
        ("hello", first["id"].as_str().unwrap())
    );
    assert_eq!(
        keyed_post(&server, path, "\"m-1\"", "hello").await,
        (200, first.clone())
    );
    let (status, body) = keyed_post(&server, path, "m-1", "something else").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = keyed_post(
        &server,
        "/v2/message?username=alice&event=x",
        "m-1",
        "hello",
    )
    .await;
    assert_eq!(status, 422, "another event type: {body}");
    let (status, body) = keyed_post(&server, "/v3/message?username=alice", "m-1", "hello").await;
    assert_eq!(status, 422, "another channel: {body}");
    let (status, body) = keyed_post(&server, path, "\"open", "hello").await;
    assert_eq!(status, 400, "{body}");
    tab.expect_silence(Duration::from_millis(300)).await;

    let answers =
        futures::future::join_all((0..20).map(|_| keyed_post(&server, path, "m-2", "once"))).await;
    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert!(!ok.is_empty(), "{answers:?}");
    assert!(ok.iter().all(|b| *b == ok[0]), "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 409),
        "{answers:?}"
    );
    assert_eq!(tab.next().await.data, "once");
    tab.expect_silence(Duration::from_millis(300)).await;

    // Bob's m-1 is his own.
    let (status, body) = keyed_post(&server, "/v2/message?username=bob", "m-1", "hi bob").await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(0)));
    server.stop().await;
}

#[tokio::test]
async fn a_users_tabs_on_different_worker_threads_each_get_every_message_in_order() {
    let server = TestServer::start_with(|c| c.worker_threads = Some(3)).await;
    // Six tabs of one user, opened one after the other: the least loaded thread takes each.
    let mut tabs = Vec::new();
    for _ in 0..6 {
        tabs.push(RawStream::open(server.addr, "/v2/sse?username=spread", "").await);
    }
    let text = server.metrics_text().await;
    for worker in 0..3 {
        let sample = format!(r#"sse_worker_connections{{worker="{worker}"}}"#);
        let open = metric_in(&text, &sample).unwrap_or(0.0);
        assert!(open >= 2.0, "{sample} = {open}\n{text}");
    }
    // Three publishers at once, on connections of their own (so on any thread).
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let url = server.url("/v2/message?username=spread");
            tokio::spawn(async move {
                let client = client();
                for i in 0..100 {
                    let response = client.post(&url).body(format!("{p}-{i}")).send().await;
                    assert_eq!(response.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut orders = Vec::new();
    for tab in &mut tabs {
        let got: Vec<String> = tab
            .read_messages(300)
            .await
            .into_iter()
            .map(|m| m.0)
            .collect();
        for p in 0..3 {
            let mine: Vec<&String> = got
                .iter()
                .filter(|m| m.starts_with(&format!("{p}-")))
                .collect();
            let expected: Vec<String> = (0..100).map(|i| format!("{p}-{i}")).collect();
            assert!(
                mine.iter().copied().eq(expected.iter()),
                "publisher {p}: {mine:?}"
            );
        }
        orders.push(got);
    }
    // Every tab saw the same order (that of the ids).
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "the tabs disagree on the order"
    );
    server.stop().await;
}
