//! Kafka as the durable log (real tansu broker): every record produced after an instance
//! started reaches its open streams however late the broker appears; a new or restarted
//! instance reads the recent past back, so clients resume there without `reset`; partitions
//! added while running are consumed; `/readyz` waits for the read-back.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::kafka::{child_on_kafka, kafka_server, wait_kafka};
use crate::support::{Sse, TestServer};
use crate::tansu::{Broker, RawProducer, unused_port};

#[tokio::test]
async fn a_record_produced_as_the_broker_appears_reaches_the_open_stream() {
    let port = unused_port();
    let server = TestServer::start_with(move |c| {
        c.kafka_brokers = Some(format!("127.0.0.1:{port}"));
        c.kafka_timeout = Duration::from_secs(2);
    })
    .await;
    let mut stream = Sse::open(&server.url("/v3/sse?username=gap"), None).await;
    // The instance has been trying to reach the broker for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let broker = Broker::start_on(port);
    let listening = Instant::now();
    let producer = RawProducer::new(&broker.address());
    producer
        .send("v3_messages", Some("gap"), Some(b"gap:first"), None)
        .await;
    eprintln!(
        "produced {:?} after the broker had its topics",
        listening.elapsed()
    );
    let event = stream.next_within(Duration::from_secs(40)).await;
    assert_eq!(event.data, "first");
    eprintln!(
        "delivered {:?} after the broker had its topics",
        listening.elapsed()
    );
    server.stop().await;
    drop(broker);
}

/// Resumes on `base` after `last` and expects exactly `want`, in order, then nothing.
async fn resume_gets(base: &str, user: &str, last: &str, want: &[(String, String)]) {
    let mut stream = Sse::open(&format!("{base}/v3/sse?username={user}"), Some(last)).await;
    for (id, data) in want {
        let event = stream.next().await;
        assert_eq!(
            (&event.id, &event.data, event.event.as_str()),
            (id, data, "message")
        );
    }
    stream.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn clients_resume_on_a_new_and_on_a_restarted_instance() {
    let broker = Broker::start();
    let a = kafka_server(&broker.address()).await;
    let mut sent = Vec::new();
    for i in 1..=20 {
        let (status, body) = a
            .post("/v3/message?username=resumer", format!("m{i}"))
            .await;
        assert_eq!(status, 202, "{body}");
        sent.push((body["id"].as_str().unwrap().to_owned(), format!("m{i}")));
    }
    let address = broker.address();
    let args = ["--kafka-brokers", address.as_str(), "--kafka-timeout", "2s"];
    // B starts after the 20 messages: it read them back.
    let mut b = child_on_kafka(&args).await;
    resume_gets(&b.url(""), "resumer", &sent[4].0, &sent[5..]).await;
    // A stream opened on B without an id gets none of the past.
    let mut fresh = Sse::open(&b.url("/v3/sse?username=resumer"), None).await;
    fresh.expect_silence(Duration::from_millis(300)).await;
    drop(fresh);
    // SIGKILLed and started again: the same.
    b.signal("KILL");
    let _ = b.child.wait().await;
    let b = child_on_kafka(&args).await;
    resume_gets(&b.url(""), "resumer", &sent[4].0, &sent[5..]).await;
    // An id older than the log (or from elsewhere) still gets reset.
    let mut old = Sse::open(&b.url("/v3/sse?username=resumer"), Some("0-999999")).await;
    assert_eq!(old.next().await.event, "reset");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_partition_added_while_running_is_consumed() {
    let broker = Broker::start();
    let address = broker.address();
    let server = TestServer::start_with({
        let address = address.clone();
        move |c| {
            c.kafka_brokers = Some(address);
            c.kafka_timeout = Duration::from_secs(2);
            c.kafka_metadata_refresh = Duration::from_secs(1);
        }
    })
    .await;
    wait_kafka(&server, true).await;
    let mut stream = Sse::open(&server.url("/v3/sse?username=grown"), None).await;
    let partition = broker.add_partition("v3_messages");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    // Produce into the new partition as soon as the producer knows of it.
    let start = Instant::now();
    loop {
        let record = FutureRecord::to("v3_messages")
            .partition(partition)
            .key("grown")
            .payload("grown:in the new partition");
        match producer
            .send(record, Timeout::After(Duration::from_secs(3)))
            .await
        {
            Ok(delivery) => {
                assert_eq!(delivery.partition, partition);
                break;
            }
            Err((e, _)) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "cannot produce: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let event = stream.next_within(Duration::from_secs(30)).await;
    assert_eq!(event.data, "in the new partition");
    assert_eq!(event.id, format!("{partition}-0"));
    let lag = format!("sse_kafka_lag{{topic=\"v3_messages\",partition=\"{partition}\"}}");
    assert_eq!(server.metric(&lag).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn readiness_waits_for_a_long_read_back() {
    const RECORDS: usize = 20_000;
    let broker = Broker::start();
    let address = broker.address();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let started = Instant::now();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(2_000) {
        let sends = chunk.iter().map(|i| {
            let user = format!("u{}", i % 100);
            let payload = format!("{user}:record {i}");
            let producer = &producer;
            async move {
                let record = FutureRecord::to("v3_messages").key(&user).payload(&payload);
                producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce failed");
            }
        });
        join_all(sends).await;
    }
    eprintln!("produced {RECORDS} records in {:?}", started.elapsed());

    let server = TestServer::start_with(move |c| {
        c.kafka_brokers = Some(address);
        c.kafka_timeout = Duration::from_secs(2);
        c.kafka_history_records = 100_000;
    })
    .await;
    let start = Instant::now();
    let mut catching_up = 0;
    loop {
        let (status, body) = server.get_json("/readyz").await;
        let kafka = &body["checks"]["kafka"];
        if kafka == "ok" {
            assert_eq!(status, 200, "{body}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        if kafka["status"] == "catching up" {
            catching_up += 1;
            assert!(kafka["readBackRemaining"].as_u64().is_some(), "{body}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "ready after {:?}, answered catching up {catching_up} times",
        start.elapsed()
    );
    assert!(catching_up > 0, "/readyz never said it was catching up");
    assert_eq!(
        server.metric("sse_kafka_readback_records_total").await,
        RECORDS as f64
    );
    assert_eq!(server.metric("sse_kafka_caught_up").await, 1.0);
    server.stop().await;
}
