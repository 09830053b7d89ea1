//! HTTPS and HTTP/2: curl over TLS (ALPN h2 and http/1.1) and with prior knowledge (h2c),
//! many streams on one HTTP/2 connection where a stalled one is reset alone, GOAWAY at
//! shutdown, certificates refused at start-up and reloaded without cutting streams. Every
//! certificate is made by the test with openssl.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{ChildServer, TestServer, WAIT};

/// Makes a self-signed P-256 certificate for `localhost` and 127.0.0.1 in `dir`, as
/// `{name}.crt` and `{name}.key`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req -x509");
    (cert, key)
}

/// Runs curl with `args` (bounded to a few seconds); (exit code, stdout, stderr).
async fn curl(args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "--max-time", "5"]).args(args);
    crate::support::output_of(command, WAIT * 2).await
}

/// curl's arguments to reach `port` as `localhost` over TLS trusting `ca`.
fn tls_args(port: u16, ca: &Path) -> Vec<String> {
    vec![
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
    ]
}

/// A curl reading an event stream, line by line.
struct CurlStream {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl CurlStream {
    /// Starts `curl -i -N args url` (headers included in the output).
    fn open(args: &[String], url: &str) -> Self {
        let mut child = tokio::process::Command::new("curl")
            .args(["-sS", "-i", "-N", "--max-time", "20"])
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// Reads lines until one satisfies `want`; every line read, in order.
    async fn read_until(&mut self, want: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let done = want(line.trim_end());
                seen.push(line.trim_end().to_owned());
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "not found in {seen:?}");
        seen
    }

    /// Stops curl by its PID.
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Waits until `user`'s stream is registered on `server` (so a publish reaches it).
async fn wait_streams(server: &TestServer, open: f64) {
    server
        .wait_metric(r#"sse_connections_open{channel="v2"}"#, open)
        .await;
}

#[tokio::test]
async fn https_serves_http2_and_http11_streams_and_posts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "a");
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let port = server.addr.port();
    let base = format!("https://localhost:{port}");
    let mut args = tls_args(port, &cert);

    // ALPN picks h2 for curl --http2, http/1.1 for --http1.1; both serve every route.
    for (flag, status_line) in [("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")] {
        let mut call = args.clone();
        call.extend(["-i".into(), flag.into(), format!("{base}/healthz")]);
        let call: Vec<&str> = call.iter().map(String::as_str).collect();
        let (code, out, err) = curl(&call).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(status_line), "{flag}: {out}");
    }
    // Cleartext on a TLS port is refused: no byte of HTTP comes back.
    let (code, out, _) = curl(&[&format!("http://127.0.0.1:{port}/healthz")]).await;
    assert_ne!(code, 0, "plain HTTP answered on the TLS port: {out}");

    args.push("--http2".into());
    let mut stream = CurlStream::open(&args, &format!("{base}/v2/sse?username=tls-user"));
    let head = stream.read_until(|l| l.starts_with("retry:")).await;
    assert_eq!(head[0], "HTTP/2 200", "{head:?}");
    assert!(
        head.iter().any(|l| l == "content-type: text/event-stream"),
        "{head:?}"
    );
    assert!(
        !head.iter().any(|l| l.starts_with("content-encoding")),
        "{head:?}"
    );
    // Registered once `/metrics` (over HTTPS too) counts it.
    let mut metrics = args.clone();
    metrics.push(format!("{base}/metrics"));
    let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let start = Instant::now();
    loop {
        let (_, text, _) = curl(&metrics).await;
        if crate::support::metric_in(&text, r#"sse_connections_open{channel="v2"}"#) == Some(1.0) {
            break;
        }
        assert!(start.elapsed() < WAIT, "stream not registered: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut post = args.clone();
    post.extend([
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_version} %{http_code}".into(),
        "-d".into(),
        "over h2".into(),
        format!("{base}/v2/message?username=tls-user"),
    ]);
    let post: Vec<&str> = post.iter().map(String::as_str).collect();
    let (code, out, err) = curl(&post).await;
    assert_eq!((code, out.as_str()), (0, "2 200"), "{err}");
    let events = stream.read_until(|l| l == "data: over h2").await;
    assert!(
        events.iter().any(|l| l.starts_with("id: ")),
        "no id: {events:?}"
    );
    stream.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge_next_to_http11() {
    let server = TestServer::start().await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let (code, out, err) =
        curl(&["-i", "--http2-prior-knowledge", &format!("{base}/healthz")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    // HTTP/1.1 on the same port, as before.
    let (code, out, _) = curl(&["-i", &format!("{base}/healthz")]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    let args = vec!["--http2-prior-knowledge".to_owned()];
    let mut stream = CurlStream::open(&args, &format!("{base}/v2/sse?username=h2c-user"));
    let head = stream.read_until(|l| l.starts_with("retry:")).await;
    assert_eq!(head[0], "HTTP/2 200", "{head:?}");
    wait_streams(&server, 1.0).await;
    let (code, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "-d",
        "over h2c",
        &format!("{base}/v2/message?username=h2c-user"),
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "2 200"), "{err}");
    stream.read_until(|l| l == "data: over h2c").await;
    stream.stop().await;
    server.stop().await;
}

/// One HTTP/2 connection to `server` (prior knowledge), with a small per-stream window so a
/// stream whose body is not read stalls quickly.
async fn h2_connection(
    server: &TestServer,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// Opens `user`'s stream on the connection; its body.
async fn h2_stream(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    server: &TestServer,
    user: &str,
) -> hyper::body::Incoming {
    let request = hyper::Request::get(server.url(&format!("/v2/sse?username={user}")))
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Reads `body` until its text so far contains `want`; the text.
async fn read_until(body: &mut hyper::body::Incoming, want: &str) -> String {
    let mut text = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
                if text.contains(want) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "{want:?} not in {text:?}");
    text
}

#[tokio::test]
async fn http2_streams_keep_the_rules_of_http11_streams() {
    let server = TestServer::start_with(|c| c.keep_alive = Duration::from_millis(300)).await;
    // A tab over HTTP/1.1 is open, so the messages are kept for replay.
    let _tab = crate::support::Sse::open(&server.url("/v2/sse?username=h2-rules"), None).await;
    wait_streams(&server, 1.0).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (status, body) = server
            .post("/v2/message?username=h2-rules", format!("message {n}"))
            .await;
        assert_eq!(status, 200);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (mut sender, _connection) = h2_connection(&server).await;
    // Resumes after the first message, asks for gzip: no compression, the replay, the ids.
    let request = hyper::Request::get(server.url("/v2/sse?username=h2-rules"))
        .header("last-event-id", &ids[0])
        .header("accept-encoding", "gzip, br")
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert!(headers.get("connection").is_none(), "{headers:?}");
    let mut body = response.into_body();
    let replay = read_until(&mut body, &format!("id: {}\ndata: message 3\n\n", ids[2])).await;
    assert!(
        replay.contains(&format!("id: {}\ndata: message 2\n\n", ids[1]))
            && !replay.contains("message 1"),
        "{replay:?}"
    );
    // Idle: the keep-alive comment, as over HTTP/1.1.
    read_until(&mut body, ": keep-alive").await;
    // A live message after the replay.
    let (status, _) = server.post("/v2/message?username=h2-rules", "live").await;
    assert_eq!(status, 200);
    read_until(&mut body, "data: live\n\n").await;
    drop(body);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_stream_is_reset_alone_and_delays_no_sibling_on_its_connection() {
    let server = TestServer::start_with(|c| {
        c.queue_max_bytes = 64 * 1024;
    })
    .await;
    let (mut sender, connection) = h2_connection(&server).await;
    let mut siblings = Vec::new();
    for i in 0..9 {
        let mut body = h2_stream(&mut sender, &server, &format!("sibling{i}")).await;
        read_until(&mut body, "retry:").await;
        siblings.push(body);
    }
    // Ten streams on one connection; this one is never read.
    let stalled = h2_stream(&mut sender, &server, "stalled").await;
    wait_streams(&server, 10.0).await;

    let chunk = "s".repeat(8 * 1024);
    let mut sent = 0;
    let start = Instant::now();
    let slow = r#"sse_slow_consumer_disconnects_total{channel="v2"}"#;
    while server.metric(slow).await == 0.0 {
        assert!(
            sent < 400 && start.elapsed() < Duration::from_secs(30),
            "the stalled stream was never dropped ({sent} messages)"
        );
        let (status, _) = server
            .post("/v2/message?username=stalled", chunk.clone())
            .await;
        assert_eq!(status, 200);
        let sibling = sent % siblings.len();
        let t = Instant::now();
        let (status, _) = server
            .post(
                &format!("/v2/message?username=sibling{sibling}"),
                format!("m{sent}"),
            )
            .await;
        assert_eq!(status, 200);
        read_until(&mut siblings[sibling], &format!("data: m{sent}\n")).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a sibling's delivery took {:?} behind the stalled stream",
            t.elapsed()
        );
        sent += 1;
    }
    // Its window filled (16 KiB), then hyper's send buffer, then its queue (64 KiB): the
    // Hub dropped it, and the stream alone was reset.
    assert!(sent >= 8, "dropped after only {sent} messages of 8 KiB");
    let mut stalled = stalled;
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the stalled stream was not ended");
    let error = outcome.expect("the stalled stream ended cleanly instead of being reset");
    // hyper wraps the h2 crate's error, whose text names the reset's reason.
    let text = format!("{error:?}");
    assert!(text.contains("CANCEL"), "not a reset: {text}");
    eprintln!("stalled stream reset after {sent} messages of 8 KiB: {text}");
    wait_streams(&server, 9.0).await;
    // The connection and its other streams go on.
    assert!(!connection.is_finished(), "the connection was closed");
    for (i, sibling) in siblings.iter_mut().enumerate() {
        let (status, _) = server
            .post(&format!("/v2/message?username=sibling{i}"), "after")
            .await;
        assert_eq!(status, 200);
        read_until(sibling, "data: after\n").await;
    }
    drop(siblings);
    drop(sender);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_http2_streams_and_sends_goaway() {
    let mut server = TestServer::start().await;
    let (mut sender, connection) = h2_connection(&server).await;
    let mut body = h2_stream(&mut sender, &server, "leaving").await;
    read_until(&mut body, "retry:").await;
    wait_streams(&server, 1.0).await;
    server.shutdown().await;
    // The stream ends cleanly (END_STREAM), the connection with GOAWAY (no error).
    let end = tokio::time::timeout(WAIT, async {
        while let Some(frame) = body.frame().await {
            frame.expect("the stream was reset instead of ended");
        }
    })
    .await;
    assert!(end.is_ok(), "the stream did not end");
    let closed = tokio::time::timeout(WAIT, connection)
        .await
        .expect("the connection was not closed")
        .unwrap();
    assert!(closed.is_ok(), "connection ended with {closed:?}");
}

/// Runs the server binary with `args` to its exit; (exit code, stderr).
async fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_server_sent_events"));
    command
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .env("SSE_LOG", "error")
        .stdin(Stdio::null());
    let (code, _, stderr) = crate::support::output_of(command, WAIT * 2).await;
    (code, stderr)
}

#[tokio::test]
async fn bad_certificates_and_keys_are_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "a");
    let (_, other_key) = make_cert(dir.path(), "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let (cert, key, other_key, garbage, missing) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
        garbage.to_str().unwrap(),
        missing.to_str().unwrap(),
    );
    let cases: [(&[&str], &str); 6] = [
        (&["--tls-cert", cert], "--tls-key"),
        (&["--tls-key", key], "--tls-cert"),
        (
            &["--tls-cert", missing, "--tls-key", key],
            "cannot read --tls-cert",
        ),
        (
            &["--tls-cert", garbage, "--tls-key", key],
            "holds no certificate",
        ),
        (
            &["--tls-cert", cert, "--tls-key", garbage],
            "holds no usable PEM private key",
        ),
        (
            &["--tls-cert", cert, "--tls-key", other_key],
            "are not a usable pair",
        ),
    ];
    for (args, message) in cases {
        let (code, stderr) = run_to_exit(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("-----") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn certificates_are_reloaded_on_sighup_and_on_change_without_cutting_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = make_cert(dir.path(), "a");
    let (cert_b, key_b) = make_cert(dir.path(), "b");
    let (cert_c, key_c) = make_cert(dir.path(), "c");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let server = ChildServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let port = server.addr.port();
    let base = format!("https://localhost:{port}");
    // Which of the certificates the server presents to a new connection.
    let trusted = |ca: &Path| {
        let mut args = tls_args(port, ca);
        args.extend(["-o".into(), "/dev/null".into(), format!("{base}/healthz")]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await.0 == 0
        }
    };
    assert!(trusted(&cert_a).await);
    assert!(!trusted(&cert_b).await);

    let mut stream = CurlStream::open(
        &tls_args(port, &cert_a),
        &format!("{base}/v2/sse?username=renewed"),
    );
    stream.read_until(|l| l.starts_with("retry:")).await;

    // A renewal, then SIGHUP: new connections get B at once.
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    server.signal("HUP");
    let start = Instant::now();
    while !trusted(&cert_b).await {
        assert!(
            start.elapsed() < WAIT,
            "certificate B not served after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!trusted(&cert_a).await);

    // Another renewal without a signal: picked up when the files change.
    std::fs::copy(&cert_c, &cert).unwrap();
    std::fs::copy(&key_c, &key).unwrap();
    let start = Instant::now();
    while !trusted(&cert_c).await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "certificate C not served after its files changed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken renewal keeps the current pair.
    std::fs::write(&key, "half written").unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        trusted(&cert_c).await,
        "a broken key replaced the working pair"
    );

    // The stream opened with A lived through all of it.
    let mut post = tls_args(port, &cert_c);
    post.extend([
        "-d".into(),
        "still here".into(),
        format!("{base}/v2/message?username=renewed"),
    ]);
    let post: Vec<&str> = post.iter().map(String::as_str).collect();
    let (code, _, err) = curl(&post).await;
    assert_eq!(code, 0, "{err}");
    stream.read_until(|l| l == "data: still here").await;
    stream.stop().await;
    server.stop().await;
}
