//! `/v3` with Kafka, against a real broker (tansu): ingestion, poison messages, two instances,
//! cross-instance replay, broker kill and restart, broker down at start-up, start position.

use std::time::{Duration, Instant};

use crate::support::{Sse, TestServer, stalled_client};
use crate::tansu::{Broker, RawProducer, unused_port};

const READY_WAIT: Duration = Duration::from_secs(30);

async fn kafka_server(broker: &str) -> TestServer {
    let broker = broker.to_owned();
    let server = TestServer::start_with(move |c| {
        c.kafka_brokers = Some(broker);
        c.kafka_timeout = Duration::from_secs(2);
    })
    .await;
    wait_kafka(&server, true).await;
    server
}

/// Waits until `/readyz` reports kafka as usable (`up`) or as down.
async fn wait_kafka(server: &TestServer, up: bool) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = server.get_json("/readyz").await;
        let ok = body["checks"]["kafka"] == "ok";
        if ok == up {
            assert_eq!(status == 200, up, "{body}");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < READY_WAIT,
            "kafka never became {}: {body}",
            if up { "ready" } else { "down" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kafka_messages_reach_v3_streams_and_poison_is_skipped() {
    let broker = Broker::start();
    let server = kafka_server(&broker.address()).await;
    let mut v3 = Sse::open(&server.url("/v3/sse?username=demo"), None).await;
    let mut v2 = Sse::open(&server.url("/v2/sse?username=demo"), None).await;
    let producer = RawProducer::new(&broker.address());

    let (p, o) = producer
        .send(
            "v3_messages",
            Some("demo"),
            Some("demo:🦋 howdy from kafka!".as_bytes()),
            None,
        )
        .await;
    let event = v3.next().await;
    assert_eq!(event.data, "🦋 howdy from kafka!");
    assert_eq!(event.id, format!("{p}-{o}"));
    // Split at the first colon; the event header sets the type; hostile text stays data.
    producer
        .send(
            "v3_messages",
            Some("demo"),
            Some(b"demo:a:b\r\nevent: x"),
            Some(b"update"),
        )
        .await;
    let event = v3.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("update", "a:b\nevent: x")
    );

    let oversize = format!("demo:{}", "x".repeat(65537));
    // (payload, `event` header) pairs that must all be skipped.
    type Record<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
    let poison: Vec<Record> = vec![
        (Some(b"no colon at all"), None),
        (Some(b":empty user"), None),
        (Some(b"bad user:space in name"), None),
        (Some(b"a\nb:line break in name"), None),
        (Some(b"demo:"), None),
        (Some(b"demo:\xff\xfe invalid utf-8"), None),
        (None, None),
        (Some(oversize.as_bytes()), None),
        (Some(b"demo:bad event header"), Some(b"a b")),
    ];
    let count = poison.len() as f64;
    for (payload, header) in poison {
        // Same key: same partition as the good messages, which must not get stuck behind them.
        producer
            .send("v3_messages", Some("demo"), payload, header)
            .await;
    }
    producer
        .send(
            "v3_messages",
            Some("demo"),
            Some(b"demo:after the poison"),
            None,
        )
        .await;
    assert_eq!(v3.next().await.data, "after the poison");
    server
        .wait_metric(r#"sse_kafka_poison_messages_total{channel="v3"}"#, count)
        .await;
    // Kafka messages go to v3 streams only, and the HTTP path goes through Kafka too.
    v2.expect_silence(Duration::from_millis(200)).await;
    let (status, body) = server
        .post("/v3/message?username=demo&event=notification", "via http")
        .await;
    assert_eq!(status, 202, "{body}");
    let event = v3.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("notification", "via http")
    );
    assert_eq!(event.id, body["id"].as_str().unwrap());
    server.stop().await;
}

#[tokio::test]
async fn two_instances_see_every_message_with_the_same_ids_and_replay_across_instances() {
    let broker = Broker::start();
    let a = kafka_server(&broker.address()).await;
    let b = kafka_server(&broker.address()).await;
    // C never has a stream for this user until the client fails over to it.
    let c = kafka_server(&broker.address()).await;
    let mut on_a = Sse::open(&a.url("/v3/sse?username=roamer"), None).await;
    let mut on_b = Sse::open(&b.url("/v3/sse?username=roamer"), None).await;

    // POSTed to A, produced by a foreign client (keyed by user, as one user's messages must be
    // to keep their order): both instances deliver, with equal ids.
    let (status, _) = a.post("/v3/message?username=roamer", "m1 via A").await;
    assert_eq!(status, 202);
    RawProducer::new(&broker.address())
        .send(
            "v3_messages",
            Some("roamer"),
            Some(b"roamer:m2 via a foreign producer"),
            None,
        )
        .await;
    let mut last_seen = String::new();
    for expected in ["m1 via A", "m2 via a foreign producer"] {
        let (ea, eb) = (on_a.next().await, on_b.next().await);
        assert_eq!((ea.data.as_str(), eb.data.as_str()), (expected, expected));
        assert_eq!(ea.id, eb.id);
        last_seen = ea.id;
    }
    // The client on A goes away; messages go on (POSTed to B); it reconnects to B.
    drop(on_a);
    drop(on_b);
    for i in 3..=5 {
        let (status, _) = b.post("/v3/message?username=roamer", format!("m{i}")).await;
        assert_eq!(status, 202);
    }
    // Let both instances consume them before the client comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut resumed = Sse::open(&b.url("/v3/sse?username=roamer"), Some(&last_seen)).await;
    for i in 3..=5 {
        assert_eq!(resumed.next().await.data, format!("m{i}"));
    }
    resumed.expect_silence(Duration::from_millis(300)).await;
    // The same on A, and on C, which never had a stream of this user.
    for server in [&a, &c] {
        let mut elsewhere =
            Sse::open(&server.url("/v3/sse?username=roamer"), Some(&last_seen)).await;
        for i in 3..=5 {
            assert_eq!(elsewhere.next().await.data, format!("m{i}"));
        }
    }
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn broker_killed_and_restarted_streams_stay_open_and_consumption_resumes() {
    let mut broker = Broker::start();
    let server = kafka_server(&broker.address()).await;
    let mut stream = Sse::open(&server.url("/v3/sse?username=steady"), None).await;
    let (status, _) = server.post("/v3/message?username=steady", "before").await;
    assert_eq!(status, 202);
    assert_eq!(stream.next().await.data, "before");

    broker.kill();
    let noticed = wait_kafka(&server, false).await;
    eprintln!("outage noticed by /readyz after {noticed:?}");
    let started = Instant::now();
    let (status, body) = server.post("/v3/message?username=steady", "during").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "503 took {:?}",
        started.elapsed()
    );
    // The stream stays open through the outage (no end, no error).
    stream.expect_silence(Duration::from_secs(1)).await;

    broker.restart();
    let recovered = wait_kafka(&server, true).await;
    eprintln!("recovered after broker restart in {recovered:?}");
    let (status, _) = server.post("/v3/message?username=steady", "after").await;
    assert_eq!(status, 202);
    assert_eq!(stream.next().await.data, "after");
    RawProducer::new(&broker.address())
        .send(
            "v3_messages",
            Some("steady"),
            Some(b"steady:foreign after"),
            None,
        )
        .await;
    assert_eq!(stream.next().await.data, "foreign after");
    server.stop().await;
}

#[tokio::test]
async fn kafka_down_at_start_up_serves_http_at_once_and_connects_later() {
    let port = unused_port();
    let started = Instant::now();
    let server = TestServer::start_with(move |c| {
        c.kafka_brokers = Some(format!("127.0.0.1:{port}"));
        c.kafka_timeout = Duration::from_secs(2);
    })
    .await;
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["kafka"]["status"], "down");
    // v2 works; v3 publishes are refused fast with a clear error.
    let mut v2 = Sse::open(&server.url("/v2/sse?username=early"), None).await;
    server.post("/v2/message?username=early", "v2 works").await;
    assert_eq!(v2.next().await.data, "v2 works");
    let t = Instant::now();
    let (status, body) = server.post("/v3/message?username=early", "too soon").await;
    assert_eq!(status, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(4));

    let broker = Broker::start_on(port);
    let took = wait_kafka(&server, true).await;
    eprintln!("consumer connected {took:?} after the broker appeared");
    let mut v3 = Sse::open(&server.url("/v3/sse?username=early"), None).await;
    let (status, _) = server
        .post("/v3/message?username=early", "now it works")
        .await;
    assert_eq!(status, 202);
    assert_eq!(v3.next().await.data, "now it works");
    server.stop().await;
    drop(broker);
}

#[tokio::test]
async fn a_restarted_instance_does_not_replay_the_topic_to_live_users() {
    let broker = Broker::start();
    let producer = RawProducer::new(&broker.address());
    let first = kafka_server(&broker.address()).await;
    let mut s = Sse::open(&first.url("/v3/sse?username=late"), None).await;
    producer
        .send("v3_messages", Some("late"), Some(b"late:old 1"), None)
        .await;
    assert_eq!(s.next().await.data, "old 1");
    first.stop().await;
    producer
        .send(
            "v3_messages",
            Some("late"),
            Some(b"late:old 2 (server down)"),
            None,
        )
        .await;

    let second = kafka_server(&broker.address()).await;
    let mut fresh = Sse::open(&second.url("/v3/sse?username=late"), None).await;
    producer
        .send("v3_messages", Some("late"), Some(b"late:new"), None)
        .await;
    assert_eq!(fresh.next().await.data, "new");
    fresh.expect_silence(Duration::from_millis(300)).await;
    second.stop().await;
}

#[tokio::test]
async fn report_events_reach_the_users_tabs_on_every_instance_through_kafka() {
    let broker = Broker::start();
    let a = kafka_server(&broker.address()).await;
    let b = kafka_server(&broker.address()).await;
    let user = "6f1c1a52-3a44-4c55-9a4b-2f8e7c1d0e11";
    let mut tab_a = Sse::open(&a.url(&format!("/v4/sse?user_id={user}")), None).await;
    let mut tab_b = Sse::open(&b.url(&format!("/v4/sse?user_id={user}")), None).await;

    let (status, report) = a.post(&format!("/v4/new/report?user_id={user}"), "").await;
    assert_eq!(status, 201, "{report}");
    let report_id = report["reportId"].as_str().unwrap().to_owned();
    for tab in [&mut tab_a, &mut tab_b] {
        let event = tab.next().await;
        assert_eq!(event.event, "report_created");
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["reportId"], report_id.as_str());
    }
    // Each instance has its own SQLite store here (in production they share DynamoDB): the
    // change is made on A, and B's tab sees it through Kafka.
    let response = crate::support::client()
        .put(a.url(&format!("/v4/report?user_id={user}")))
        .json(&serde_json::json!({ "id": report_id, "status": "queued" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for tab in [&mut tab_a, &mut tab_b] {
        let event = tab.next().await;
        assert_eq!(event.event, "report_status_update");
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({ "id": report_id, "status": "queued" })
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_stalled_v3_client_never_blocks_the_kafka_poll_loop() {
    let broker = Broker::start();
    let address = broker.address();
    let server = TestServer::start_with(move |c| {
        c.kafka_brokers = Some(address);
        c.queue_size = 8;
    })
    .await;
    wait_kafka(&server, true).await;
    // Connected, request sent, never reads a byte.
    let _stalled = stalled_client(server.addr, "/v3/sse?username=shared").await;
    server
        .wait_metric(r#"sse_connections_open{channel="v3"}"#, 1.0)
        .await;
    let mut reader = Sse::open(&server.url("/v3/sse?username=shared"), None).await;
    let producer = RawProducer::new(&broker.address());
    let payload = format!("shared:{}", "k".repeat(60 * 1024));
    let start = Instant::now();
    let mut sent = 0;
    while server
        .metric(r#"sse_slow_consumer_disconnects_total{channel="v3"}"#)
        .await
        == 0.0
    {
        assert!(
            sent < 1500 && start.elapsed() < Duration::from_secs(90),
            "the stalled client was never dropped ({sent} messages)"
        );
        let t = Instant::now();
        producer
            .send(
                "v3_messages",
                Some("shared"),
                Some(payload.as_bytes()),
                None,
            )
            .await;
        // The reading tab gets every message promptly although the other never reads.
        assert_eq!(
            reader.next().await.data.len(),
            payload.len() - "shared:".len()
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "delivery took {:?}",
            t.elapsed()
        );
        sent += 1;
    }
    eprintln!("stalled v3 client dropped after {sent} kafka messages");
    producer
        .send(
            "v3_messages",
            Some("shared"),
            Some(b"shared:still flowing"),
            None,
        )
        .await;
    assert_eq!(reader.next().await.data, "still flowing");
    server
        .wait_metric(r#"sse_connections_open{channel="v3"}"#, 1.0)
        .await;
    server.stop().await;
}
