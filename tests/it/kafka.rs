//! `/v3` with Kafka, against a real broker (tansu): ingestion, poison messages, two instances,
//! cross-instance replay, broker kill and restart, broker down at start-up, start position.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Sse, TestServer, stalled_client};
use crate::tansu::{Broker, RawProducer, unused_port};

const READY_WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn kafka_server(broker: &str) -> TestServer {
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
pub(crate) async fn wait_kafka(server: &TestServer, up: bool) -> Duration {
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

/// Polls `url` (`/readyz` of a child process) until kafka is usable.
async fn wait_child_kafka(url: &str) {
    let start = Instant::now();
    loop {
        if let Ok(response) = crate::support::client().get(url).send().await {
            let (_, body) = crate::support::json_of(response).await;
            if body["checks"]["kafka"] == "ok" {
                return;
            }
        }
        assert!(start.elapsed() < READY_WAIT, "kafka never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a child's `/metrics` until `sample` has `value`.
async fn wait_child_metric(server: &crate::support::ChildServer, sample: &str, value: f64) {
    let start = Instant::now();
    loop {
        let text = crate::support::metrics_at(server.addr).await;
        if crate::support::metric_in(&text, sample) == Some(value) {
            return;
        }
        assert!(
            start.elapsed() < READY_WAIT,
            "{sample} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server process with `args` (which name the broker), once its Kafka bus is ready.
pub(crate) async fn child_on_kafka(args: &[&str]) -> crate::support::ChildServer {
    let server = crate::support::ChildServer::start(args).await;
    wait_child_kafka(&server.url("/readyz")).await;
    server
}

/// Creates a report of `user` through `base` (asserting 201); its id.
async fn create_report(base: &str, user: &str) -> String {
    let response = crate::support::client()
        .post(format!("{base}/v4/new/report?user_id={user}"))
        .send()
        .await
        .unwrap();
    let (status, report) = crate::support::json_of(response).await;
    assert_eq!(status, 201, "{report}");
    report["reportId"].as_str().unwrap().to_owned()
}

async fn put_status(base: &str, user: &str, report: &str, status: &str) -> u16 {
    crate::support::client()
        .put(format!("{base}/v4/report?user_id={user}"))
        .json(&serde_json::json!({ "id": report, "status": status }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The (event, status, id) of a `report_status_update`.
fn status_update(event: &eventsource_stream::Event) -> (String, String, String) {
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    (
        event.event.clone(),
        data["status"].as_str().unwrap_or_default().to_owned(),
        event.id.clone(),
    )
}

/// The metrics lines about the bus and the outbox (for a failure's message).
fn kafka_lines(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.contains("kafka") || l.contains("outbox") || l.contains("publish"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long an outbox event may take to arrive once the broker is back: the producer's
/// reconnect, a failed attempt of up to `--kafka-timeout` and the relay's next pass, on a busy
/// machine.
const AFTER_OUTAGE: Duration = Duration::from_secs(20);

/// Issue 11: changes committed while the broker is down reach the tab on the writing instance
/// at once and the tab on the other instance once the broker is back, each once; a change
/// whose instance is SIGKILLed before it could relay it is relayed when that instance restarts.
#[tokio::test]
async fn report_changes_during_a_kafka_outage_reach_every_tab_once() {
    let mut broker = Broker::start();
    let brokers = broker.address();
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("a.sqlite3");
    let args = [
        "--kafka-brokers",
        brokers.as_str(),
        "--kafka-timeout",
        "2s",
        "--database",
        db.to_str().unwrap(),
    ];
    let a = child_on_kafka(&args).await;
    let a_base = a.url("");
    let b = kafka_server(&brokers).await;
    let user = "0d7f6a1e-7c55-4f0e-8a36-5b9c2e4d1a77";
    let mut tab_a = Sse::open(&a.url(&format!("/v4/sse?user_id={user}")), None).await;
    let mut tab_b = Sse::open(&b.url(&format!("/v4/sse?user_id={user}")), None).await;

    let report_id = create_report(&a_base, user).await;
    let created_a = tab_a.next().await;
    let created_b = tab_b.next().await;
    assert_eq!(created_a.event, "report_created");
    assert_eq!(created_a.id, created_b.id, "one id on every instance");
    assert!(
        uuid::Uuid::parse_str(&created_a.id).is_ok(),
        "{}",
        created_a.id
    );

    // Outage 1: the writing instance's tab gets the change at once, the other one later.
    broker.kill();
    wait_kafka(&b, false).await;
    let t = Instant::now();
    assert_eq!(put_status(&a_base, user, &report_id, "queued").await, 200);
    let queued_a = status_update(&tab_a.next().await);
    assert_eq!(queued_a.1, "queued");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_child_metric(&a, "sse_outbox_events", 1.0).await;
    tab_b.expect_silence(Duration::from_millis(500)).await;
    broker.restart();
    wait_kafka(&b, true).await;
    // A's producer reconnects (capped backoff), its relay's next pass sends the event.
    let back = Instant::now();
    let Some(relayed) = tab_b.try_next_within(AFTER_OUTAGE).await else {
        panic!(
            "the relayed event did not reach B within {AFTER_OUTAGE:?}\n--- A's metrics:\n{}\n--- B's metrics:\n{}",
            kafka_lines(&crate::support::metrics_at(a.addr).await),
            kafka_lines(&b.metrics_text().await)
        );
    };
    assert_eq!(status_update(&relayed), queued_a);
    eprintln!(
        "relayed event arrived {:?} after the broker was back",
        back.elapsed()
    );
    wait_child_metric(&a, "sse_outbox_events", 0.0).await;
    // The event coming back from the broker is not shown twice on A.
    tab_a.expect_silence(Duration::from_secs(1)).await;

    // Outage 2, and A dies before it could relay its change.
    broker.kill();
    wait_kafka(&b, false).await;
    assert_eq!(
        put_status(&a_base, user, &report_id, "processing").await,
        200
    );
    let processing_a = status_update(&tab_a.next().await);
    assert_eq!(processing_a.1, "processing");
    a.signal("KILL");
    drop(a);
    broker.restart();
    wait_kafka(&b, true).await;
    tab_b.expect_silence(Duration::from_millis(500)).await;
    let a = crate::support::ChildServer::start(&args).await;
    let restarted = Instant::now();
    assert_eq!(
        status_update(&tab_b.next_within(AFTER_OUTAGE).await),
        processing_a
    );
    eprintln!(
        "event of the killed instance arrived {:?} after its restart",
        restarted.elapsed()
    );
    wait_child_metric(&a, "sse_outbox_events", 0.0).await;
    // Exactly the committed changes, none twice.
    tab_b.expect_silence(Duration::from_secs(1)).await;
    a.stop().await;
    b.stop().await;
}

/// POSTs a v3 message with `Idempotency-Key: key` to `server`; (status, JSON body).
async fn keyed_message(server: &TestServer, user: &str, key: &str, body: &str) -> (u16, Value) {
    let url = server.url(&format!("/v3/message?username={user}"));
    crate::support::post_keyed(&url, key, body).await
}

/// Issue 11: with Kafka a message key holds across instances: a retry sent to the other
/// instance is answered with the first id and not delivered again; two records with the same
/// key header (as two instances' producers may write) are delivered once, everywhere.
#[tokio::test]
async fn a_message_key_holds_across_instances() {
    let broker = Broker::start();
    let a = kafka_server(&broker.address()).await;
    let b = kafka_server(&broker.address()).await;
    let mut tab_a = Sse::open(&a.url("/v3/sse?username=kim"), None).await;
    let mut tab_b = Sse::open(&b.url("/v3/sse?username=kim"), None).await;
    let (status, first) = keyed_message(&a, "kim", "k-1", "once").await;
    assert_eq!(
        (status, first["accepted"].as_bool()),
        (202, Some(true)),
        "{first}"
    );
    for tab in [&mut tab_a, &mut tab_b] {
        let event = tab.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            ("once", first["id"].as_str().unwrap())
        );
    }
    assert_eq!(
        keyed_message(&b, "kim", "k-1", "once").await,
        (202, first.clone())
    );
    assert_eq!(
        keyed_message(&a, "kim", "k-1", "once").await,
        (202, first.clone())
    );
    let (status, body) = keyed_message(&b, "kim", "k-1", "another").await;
    assert_eq!(status, 422, "{body}");

    // The same key in two records: the first is delivered, the second is not.
    let producer = RawProducer::new(&broker.address());
    let headers: &[(&str, &[u8])] = &[("idempotency-key", b"k-2")];
    let (partition, offset) = producer
        .send_with_headers("v3_messages", Some("kim"), Some(b"kim:twice"), headers)
        .await;
    producer
        .send_with_headers("v3_messages", Some("kim"), Some(b"kim:twice"), headers)
        .await;
    producer
        .send("v3_messages", Some("kim"), Some(b"kim:after"), None)
        .await;
    let expected = format!("{partition}-{offset}");
    for tab in [&mut tab_a, &mut tab_b] {
        let event = tab.next().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_str()),
            ("twice", expected.as_str())
        );
        assert_eq!(tab.next().await.data, "after");
    }
    // A request with that key is answered as the record's own: nothing published.
    let (status, body) = keyed_message(&a, "kim", "k-2", "twice").await;
    assert_eq!(
        (status, body["id"].as_str()),
        (202, Some(expected.as_str()))
    );
    for tab in [&mut tab_a, &mut tab_b] {
        tab.expect_silence(Duration::from_millis(500)).await;
    }
    assert_eq!(a.metric("sse_message_repeats_dropped_total").await, 1.0);
    assert_eq!(b.metric("sse_message_repeats_dropped_total").await, 1.0);
    a.stop().await;
    b.stop().await;
}

/// Issue 11: on SIGTERM a write still waiting for the store finishes, its answer is sent and
/// its event reaches the other instance's tab before the process exits; nothing is left in
/// the outbox for the next start.
#[tokio::test]
async fn shutdown_finishes_the_writes_in_flight_and_relays_their_events() {
    let broker = Broker::start();
    let brokers = broker.address();
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("a.sqlite3");
    let args = [
        "--kafka-brokers",
        brokers.as_str(),
        "--kafka-timeout",
        "2s",
        "--store-timeout",
        "4s",
        "--shutdown-timeout",
        "3s",
        "--database",
        db.to_str().unwrap(),
    ];
    let a = child_on_kafka(&args).await;
    let a_base = a.url("");
    let b = kafka_server(&brokers).await;
    let user = "5c0a9e4b-3f1d-4a2e-9b8c-7d6e5f4a3b21";
    let mut tab_b = Sse::open(&b.url(&format!("/v4/sse?user_id={user}")), None).await;
    let report_id = create_report(&a_base, user).await;
    assert_eq!(tab_b.next().await.event, "report_created");

    // The change waits for another process's lock on the database while A is told to stop.
    let locker = crate::store_faults::Locker::lock(&db).await;
    let put = {
        let (base, id) = (a_base.clone(), report_id.clone());
        tokio::spawn(async move { put_status(&base, user, &id, "queued").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    locker.release().await;
    assert_eq!(put.await.unwrap(), 200, "the write in flight finished");
    let (event, status, _) = status_update(&tab_b.next().await);
    assert_eq!(
        (event.as_str(), status.as_str()),
        ("report_status_update", "queued")
    );
    let mut a = a;
    let exit = tokio::time::timeout(Duration::from_secs(15), a.child.wait())
        .await
        .expect("A did not exit after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");

    // Restarted on the same database: the change is there and nothing is relayed again.
    let a = crate::support::ChildServer::start(&args).await;
    let response = crate::support::client()
        .get(a.url(&format!("/v4/report/{report_id}?user_id={user}")))
        .send()
        .await
        .unwrap();
    let (_, now) = crate::support::json_of(response).await;
    assert_eq!(now["reportStatus"], "queued");
    wait_child_metric(&a, "sse_outbox_events", 0.0).await;
    tab_b.expect_silence(Duration::from_secs(2)).await;
    a.stop().await;
    b.stop().await;
}
