//! Test harness: real servers on 127.0.0.1:0, an SSE client built on a real parser
//! (`eventsource-stream`), raw sockets for byte-exact and misbehaving clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use server_sent_events::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Holds the server's SQLite database; removed when the server is dropped.
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A server with the default configuration (short keep-alive for tests).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `tweak` may change first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::for_tests(addr);
        config.keep_alive = Duration::from_secs(30);
        let data_dir = tempfile::tempdir().unwrap();
        config.database = data_dir.path().join("reports.sqlite3");
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server_sent_events::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Shuts the server down and waits for it, keeping its data folder.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server did not stop in time")
                .unwrap()
                .unwrap();
        }
    }

    /// POSTs `body` and returns (status, JSON body).
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let response = client()
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    /// GETs `path` and returns (status, JSON body).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        json_of(client().get(self.url(path)).send().await.unwrap()).await
    }

    /// A request to `path` with the shared client settings (send it, then [`json_of`]).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client().request(method, self.url(path))
    }

    /// PUTs `body` with `Content-Type: application/json` and returns (status, JSON body).
    pub async fn put_json(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let response = self
            .request(reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        metrics_at(self.addr).await
    }

    /// The value of one sample line of `/metrics`, e.g. `sse_connections_open{channel="v2"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_in(&text, sample).unwrap_or_else(|| panic!("{sample} not in /metrics:\n{text}"))
    }

    /// Like [`TestServer::metric`], 0 for a sample not (yet) exposed.
    pub async fn metric_or_zero(&self, sample: &str) -> f64 {
        metric_in(&self.metrics_text().await, sample).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `sample` equals `value` (bounded by [`WAIT`]).
    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(sample).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} is {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Finds one sample's value in a Prometheus text exposition.
pub fn metric_in(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A client that sends `GET path` with a 4 KiB receive buffer and then never reads a byte.
pub async fn stalled_client(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stalled
}

/// A shared HTTP client without connection reuse surprises.
/// POSTs `body` to `url` with `Idempotency-Key: key`; (status, JSON body).
pub async fn post_keyed(url: &str, key: &str, body: &str) -> (u16, serde_json::Value) {
    let response = client()
        .post(url)
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    json_of(response).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Status and JSON body of a response (`Null` when the body is not JSON).
pub async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// An open SSE stream parsed by a WHATWG-style parser.
pub struct Sse {
    pub headers: HeaderMap,
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl Sse {
    /// Opens `url` (with an optional `Last-Event-ID`) and checks it is an event stream.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        match last_event_id {
            Some(id) => Self::open_with(url, &[("Last-Event-ID", id)]).await,
            None => Self::open_with(url, &[]).await,
        }
    }

    /// Opens `url` with extra request `headers` and checks it is an event stream.
    pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut request = client().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Sse {
            headers,
            events: Box::pin(events),
        }
    }

    /// The next event, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT).await
    }

    /// The next event, waiting up to `wait` (for what depends on a broker reconnecting).
    pub async fn next_within(&mut self, wait: Duration) -> Event {
        match tokio::time::timeout(wait, self.events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no event within {wait:?}"),
        }
    }

    /// The next event, or `None` when none arrives within `wait`.
    pub async fn try_next_within(&mut self, wait: Duration) -> Option<Event> {
        match tokio::time::timeout(wait, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => None,
        }
    }

    /// `None` if no event arrives within `wait`; panics on an event.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(wait, self.events.next()).await {
            panic!("unexpected event {event:?}");
        }
    }

    /// Whether the stream ends (cleanly or not) within `wait`, skipping any events.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async {
            while let Some(item) = self.events.next().await {
                if item.is_err() {
                    break;
                }
            }
        })
        .await
        .is_ok()
    }
}

/// A raw HTTP/1.1 GET whose response body is read byte for byte (chunked framing removed).
pub struct RawStream {
    reader: BufReader<TcpStream>,
    pub head: String,
}

impl RawStream {
    /// Sends `GET path` with extra header lines and reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, extra_headers: &str) -> RawStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, reader.read_line(&mut line))
                .await
                .expect("no response head")
                .unwrap();
            assert!(n > 0, "connection closed before the response head");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        RawStream { reader, head }
    }

    /// Reads body bytes (de-chunked) for `duration`, or until the body ends.
    pub async fn read_for(&mut self, duration: Duration) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(duration, async {
            loop {
                let mut size = String::new();
                if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let Ok(len) = usize::from_str_radix(size.trim(), 16) else {
                    return;
                };
                let mut chunk = vec![0; len + 2];
                if self.reader.read_exact(&mut chunk).await.is_err() || len == 0 {
                    return;
                }
                out.extend_from_slice(&chunk[..len]);
            }
        })
        .await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl RawStream {
    /// Reads `count` messages (skipping comments and `retry:`), each as its first `data:`
    /// line and how many further `data:` lines it had, failing the test after [`WAIT`].
    pub async fn read_messages(&mut self, count: usize) -> Vec<(String, usize)> {
        let mut messages = Vec::new();
        let mut pending = Vec::<u8>::new();
        let mut current: Option<(String, usize)> = None;
        let read = async {
            while messages.len() < count {
                let mut size = String::new();
                assert!(
                    self.reader.read_line(&mut size).await.unwrap() > 0,
                    "body ended"
                );
                let len = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; len + 2];
                self.reader.read_exact(&mut chunk).await.unwrap();
                pending.extend_from_slice(&chunk[..len]);
                let mut start = 0;
                while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                    let line = &pending[start..start + end];
                    start += end + 1;
                    if let Some(data) = line.strip_prefix(b"data: ") {
                        match &mut current {
                            None => current = Some((String::from_utf8_lossy(data).into_owned(), 0)),
                            Some((_, more)) => *more += 1,
                        }
                    } else if line.is_empty() {
                        messages.extend(current.take());
                    }
                }
                pending.drain(..start);
            }
        };
        if tokio::time::timeout(WAIT, read).await.is_err() {
            panic!("fewer than {count} messages within {WAIT:?}");
        }
        messages
    }
}

/// The whole `/metrics` text of the server at `addr`.
pub async fn metrics_at(addr: SocketAddr) -> String {
    client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs `command` to its end, failing the test after `limit`: (exit code, stdout, stderr).
pub async fn output_of(
    mut command: tokio::process::Command,
    limit: Duration,
) -> (i32, String, String) {
    let output = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .expect("the command did not finish in time")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The server binary, started as a child process (for signal and shutdown tests).
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Holds the default SQLite database (unless `--database` was given).
    pub data_dir: tempfile::TempDir,
    /// Every line the server wrote to stdout (its log).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts the binary with `args` on 127.0.0.1:0 and waits for its "listening" line.
    pub async fn start(args: &[&str]) -> ChildServer {
        let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_server_sent_events"));
        Self::start_command(command, args).await
    }

    /// Like [`ChildServer::start`], with the open-file limit (`ulimit -n`) set to `open_files`.
    pub async fn start_with_open_files(open_files: u32, args: &[&str]) -> ChildServer {
        Self::start_under(&format!("ulimit -n {open_files}"), args).await
    }

    /// Like [`ChildServer::start`], after the shell commands `setup` (e.g. `ulimit -f 200`);
    /// the shell then execs the server, so the PID is the server's.
    pub async fn start_under(setup: &str, args: &[&str]) -> ChildServer {
        let mut command = tokio::process::Command::new("sh");
        command.args([
            "-c",
            &format!("{setup} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_server_sent_events"),
        ]);
        Self::start_command(command, args).await
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn start_command(mut command: tokio::process::Command, args: &[&str]) -> ChildServer {
        let data_dir = tempfile::tempdir().unwrap();
        if !args.contains(&"--bind") {
            command.args(["--bind", "127.0.0.1:0"]);
        }
        if !args.contains(&"--database") {
            command
                .arg("--database")
                .arg(data_dir.path().join("reports.sqlite3"));
        }
        let mut child = command
            .args(args)
            .env("SSE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("address=").nth(1) {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            panic!("server exited before listening");
        })
        .await
        .expect("server did not start");
        // Keep draining stdout so the child never blocks on a full pipe; with
        // SSE_TEST_ECHO set, show its log (to debug a failing test).
        let echo = std::env::var_os("SSE_TEST_ECHO").is_some();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[child {addr}] {line}");
                }
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line);
                }
            }
        });
        ChildServer {
            child,
            addr,
            data_dir,
            log,
        }
    }

    /// Stops the child with SIGTERM (by its PID) and waits for a clean exit.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server did not exit after SIGTERM")
            .unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    /// Sends `signal` to the child by its PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("child already reaped").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
