//! A real Kafka-compatible broker (tansu, installed by `scripts/install-tansu.sh`) per test,
//! with SQLite file storage so it survives a kill and restart; and a raw rdkafka producer.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// One broker process and its data folder.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn tansu_bin() -> PathBuf {
    if let Ok(path) = std::env::var("SSE_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("SSE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/server_sent_events")
        });
    let bin = cache.join("tansu/bin/tansu");
    assert!(
        bin.exists(),
        "tansu not found at {}: run scripts/install-tansu.sh (or set SSE_TANSU_BIN)",
        bin.display()
    );
    bin
}

/// A free port below the kernel's ephemeral range, so a client retrying a stopped broker
/// cannot end up connected to itself on that port.
fn free_low_port() -> u16 {
    for _ in 0..200 {
        let port = 20000 + (rand_u32() % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    h.finish() as u32
}

/// A port nothing listens on (for "broker down" tests); a broker may be started there later.
pub fn unused_port() -> u16 {
    free_low_port()
}

impl Broker {
    /// Starts a broker with `v3_messages` and `v4_messages` (3 partitions each).
    pub fn start() -> Broker {
        Self::start_on(free_low_port())
    }

    /// Starts a broker on `port` with the default topics.
    pub fn start_on(port: u16) -> Broker {
        let mut broker = Broker {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        broker.launch();
        for topic in ["v3_messages", "v4_messages"] {
            broker.create_topic(topic, 3);
        }
        broker
    }

    /// `127.0.0.1:PORT`, for `--kafka-brokers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("broker.log")).unwrap();
        // The sqlite path is relative to the working directory (an absolute one is refused).
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://broker.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args([topic, "--partitions", &partitions.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cannot create topic {topic}");
    }

    /// Adds a partition to `topic` while the broker runs. tansu 0.6.0 has no CreatePartitions
    /// API, so this makes the change its topic creation makes, in its storage: the partition
    /// count its metadata answers with, the partition's row and its watermark. Returns the new
    /// partition's number.
    pub fn add_partition(&self, topic: &str) -> i32 {
        let db = rusqlite::Connection::open(self.dir.path().join("broker.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let (id, count): (i64, i32) = db
            .query_row(
                "select id, partitions from topic where name = ?1",
                [topic],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        db.execute(
            "insert into topition (topic, partition) values (?1, ?2)",
            rusqlite::params![id, count],
        )
        .unwrap();
        db.execute(
            "insert into watermark (topition) select id from topition where topic = ?1 and partition = ?2",
            rusqlite::params![id, count],
        )
        .unwrap();
        db.execute(
            "update topic set partitions = ?1 where id = ?2",
            rusqlite::params![count + 1, id],
        )
        .unwrap();
        count
    }

    /// Kills the broker (SIGKILL by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage file.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw producer, to send exactly the bytes a foreign Kafka client might.
pub struct RawProducer(FutureProducer);

impl RawProducer {
    pub fn new(address: &str) -> Self {
        RawProducer(
            ClientConfig::new()
                .set("bootstrap.servers", address)
                .set("message.timeout.ms", "10000")
                .set("linger.ms", "0")
                .create()
                .unwrap(),
        )
    }

    /// Produces one record and returns its (partition, offset).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Option<&[u8]>,
        event_header: Option<&[u8]>,
    ) -> (i32, i64) {
        let headers: Vec<(&str, &[u8])> = event_header.map(|v| ("event", v)).into_iter().collect();
        self.send_with_headers(topic, key, payload, &headers).await
    }

    /// Produces one record with `headers` and returns its (partition, offset).
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> (i32, i64) {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new();
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            record = record.headers(owned);
        }
        let delivery = self
            .0
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| e)
            .expect("produce failed");
        (delivery.partition, delivery.offset)
    }
}
