//! Truthful outcomes on a real SQLite file under real faults (issue 11): a lock held by another
//! process, a file system that is full. A 2xx means the change is in the database and its event
//! was sent; a 5xx means it is not, will not be, and no event was sent.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{ChildServer, Sse, TestServer, WAIT, client, json_of};
use crate::v4::{create, new_user};

/// Another process that holds SQLite's write lock on `path` (`BEGIN IMMEDIATE`) until it is
/// dropped.
pub(crate) struct Locker(tokio::process::Child);

impl Locker {
    pub(crate) async fn lock(path: &std::path::Path) -> Locker {
        let mut child = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 sys.stdin.read()\n\
                 c.execute('ROLLBACK')\n",
            ])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the locker did not lock")
            .unwrap();
        assert_eq!(line.as_deref(), Some("locked"));
        Locker(child)
    }

    /// Releases the lock (closing its stdin) and waits for the process to end.
    pub(crate) async fn release(mut self) {
        drop(self.0.stdin.take());
        let status = tokio::time::timeout(WAIT, self.0.wait())
            .await
            .expect("the locker did not exit")
            .unwrap();
        assert!(status.success());
    }
}

async fn put_status(base: &str, user: &str, report: &str, to: &str) -> (u16, Value) {
    let response = client()
        .put(format!("{base}/v4/report?user_id={user}"))
        .header("Content-Type", "application/json")
        .body(json!({ "id": report, "status": to }).to_string())
        .send()
        .await
        .unwrap();
    json_of(response).await
}

async fn status_of(base: &str, user: &str, report: &str) -> String {
    let response = client()
        .get(format!("{base}/v4/report/{report}?user_id={user}"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    body["reportStatus"].as_str().unwrap().to_owned()
}

async fn report_count(base: &str, user: &str) -> usize {
    let response = client()
        .get(format!("{base}/v4/reports?user_id={user}"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().len()
}

async fn readyz(base: &str) -> (u16, Value) {
    json_of(client().get(format!("{base}/readyz")).send().await.unwrap()).await
}

#[tokio::test]
async fn a_lock_held_by_another_process_gets_503_and_nothing_lands_later() {
    let server = TestServer::start_with(|c| c.store_timeout = Duration::from_secs(1)).await;
    let base = server.url("");
    let database = server.data_dir.path().join("reports.sqlite3");
    let user = new_user();
    let report = create(&server, &user).await["reportId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tab = Sse::open(&server.url(&format!("/v4/sse?user_id={user}")), None).await;

    let locker = Locker::lock(&database).await;
    let started = Instant::now();
    let (status, body) = put_status(&base, &user, &report, "queued").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = server
        .post(&format!("/v4/new/report?user_id={user}"), "")
        .await;
    assert_eq!(status, 503);
    let (status, body) = readyz(&base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"]["status"], "down", "{body}");
    locker.release().await;

    // Well after the lock is gone, neither the change nor the report appeared, and no event.
    tab.expect_silence(Duration::from_millis(1500)).await;
    assert_eq!(status_of(&base, &user, &report).await, "pending");
    assert_eq!(report_count(&base, &user).await, 1);
    let (status, body) = readyz(&base).await;
    assert_eq!(status, 200, "{body}");

    // And the same change succeeds now, with its event.
    let (status, body) = put_status(&base, &user, &report, "queued").await;
    assert_eq!(
        (status, body["reportStatus"].as_str()),
        (200, Some("queued"))
    );
    let event = tab.next().await;
    assert_eq!(event.event, "report_status_update");
    server.stop().await;
}

#[tokio::test]
async fn a_full_disk_answers_503_writes_nothing_and_sends_no_event() {
    // 256 KiB per file, and SIGXFSZ ignored so a write past it fails with EFBIG instead of
    // killing the process: the SQLite write-ahead log soon cannot grow.
    let server = ChildServer::start_under("trap '' XFSZ && ulimit -f 256", &[]).await;
    let base = server.url("");
    let user = new_user();
    let mut created = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        let response = client()
            .post(format!("{base}/v4/new/report?user_id={user}"))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        match status {
            201 => created.push(body["reportId"].as_str().unwrap().to_owned()),
            503 => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(
        refused,
        3,
        "the disk never filled ({} created)",
        created.len()
    );
    assert!(!created.is_empty());
    // Exactly the answered creations exist.
    assert_eq!(report_count(&base, &user).await, created.len());
    let (status, body) = readyz(&base).await;
    assert_eq!(status, 503, "{body}");

    let mut tab = Sse::open(&server.url(&format!("/v4/sse?user_id={user}")), None).await;
    for report in created.iter().take(3) {
        let (status, body) = put_status(&base, &user, report, "queued").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(status_of(&base, &user, report).await, "pending");
    }
    tab.expect_silence(Duration::from_millis(500)).await;
    drop(server);
}
