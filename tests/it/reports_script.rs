//! The operator tools around `/v4`: `update_report_status.sh` against a real server, and the
//! `init-dynamodb` subcommand (directly and through `dynamodb_local_init.sh`) against moto.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use crate::moto::{Moto, unique_table};
use crate::support::TestServer;
use crate::v4::{create, new_user};

/// Upper bound for one run of a script or of the binary.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Runs `command` to completion within [`RUN_LIMIT`]: (exit code, stdout, stderr, duration).
async fn run(command: &mut Command) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(RUN_LIMIT, command.kill_on_drop(true).output())
        .await
        .expect("did not finish in time")
        .expect("could not start");
    (
        status.code().expect("exited by a signal"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        started.elapsed(),
    )
}

async fn update_status(base_url: &str, args: &[&str]) -> (i32, String, String) {
    let (code, out, err, _) = run(Command::new(repo_file("update_report_status.sh"))
        .args(args)
        .env("SSE_BASE_URL", base_url))
    .await;
    (code, out, err)
}

/// The JSON body the script printed (every line but the final `HTTP nnn`).
fn printed_json(stdout: &str) -> Value {
    let body: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("HTTP ")).collect();
    serde_json::from_str(&body.join("\n")).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

#[tokio::test]
async fn update_report_status_script_exit_codes() {
    let server = TestServer::start().await;
    let base = server.url("");
    let user = new_user();
    let report = create(&server, &user).await;
    let id = report["reportId"].as_str().expect("reportId").to_owned();

    // A valid transition: exit 0, the updated report and the status are printed.
    let (code, out, err) = update_status(&base, &[&user, &id, "queued"]).await;
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert!(out.trim_end().ends_with("HTTP 200"), "{out:?}");
    let printed = printed_json(&out);
    assert_eq!(printed["reportStatus"], "queued");
    assert_eq!(printed["reportId"], id.as_str());
    // A trailing slash on the base URL is fine.
    let (code, out, _) = update_status(&format!("{base}/"), &[&user, &id, "processing"]).await;
    assert_eq!(code, 0, "{out:?}");

    // An invalid transition: exit 1, the 409 and its explanation are printed.
    let (code, out, _) = update_status(&base, &[&user, &id, "pending"]).await;
    assert_eq!(code, 1, "{out:?}");
    assert!(out.trim_end().ends_with("HTTP 409"), "{out:?}");
    assert_eq!(printed_json(&out)["currentStatus"], "processing");

    // An unknown report, another user's report, an unknown status: exit 1.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (code, out, _) = update_status(&base, &[&user, &unknown, "queued"]).await;
    assert_eq!(code, 1, "{out:?}");
    assert!(out.trim_end().ends_with("HTTP 404"), "{out:?}");
    let (code, out, _) = update_status(&base, &[&new_user(), &id, "completed"]).await;
    assert_eq!(
        (code, out.trim_end().ends_with("HTTP 404")),
        (1, true),
        "{out:?}"
    );
    let (code, out, _) = update_status(&base, &[&user, &id, "done"]).await;
    assert_eq!(
        (code, out.trim_end().ends_with("HTTP 422")),
        (1, true),
        "{out:?}"
    );

    // Wrong argument count or unusable arguments: exit 2 with the usage, nothing sent.
    let (u, i) = (user.as_str(), id.as_str());
    for args in [&[][..], &[u][..], &[u, i][..], &[u, i, "queued", "x"][..]] {
        let (code, out, err) = update_status(&base, args).await;
        assert_eq!(code, 2, "{args:?}: {out:?} {err:?}");
        assert!(err.contains("usage:"), "{err:?}");
    }
    let (code, _, err) = update_status(&base, &[&user, &id, "completed\"x"]).await;
    assert_eq!(code, 2, "{err:?}");
    let (_, now) = server
        .get_json(&format!("/v4/report/{id}?user_id={user}"))
        .await;
    assert_eq!(now["reportStatus"], "processing", "nothing else changed it");

    // Issue 11: the script sends an Idempotency-Key; with SSE_IDEMPOTENCY_KEY a second run
    // is a replay (200, the first answer, nothing changed) instead of a 409.
    let fresh = create(&server, &user).await;
    let fresh_id = fresh["reportId"].as_str().expect("reportId").to_owned();
    let keyed = |status: &'static str, key: &'static str| {
        let base = base.clone();
        let (user, id) = (user.clone(), fresh_id.clone());
        async move {
            let (code, out, _, _) = run(Command::new(repo_file("update_report_status.sh"))
                .args([user.as_str(), id.as_str(), status])
                .env("SSE_BASE_URL", &base)
                .env("SSE_IDEMPOTENCY_KEY", key))
            .await;
            (code, out)
        }
    };
    let (code, first) = keyed("queued", "script-key-1").await;
    assert_eq!(code, 0, "{first:?}");
    let (code, again) = keyed("queued", "script-key-1").await;
    assert_eq!((code, again.as_str()), (0, first.as_str()));
    let (code, out) = keyed("canceled", "script-key-1").await;
    assert_eq!(
        (code, out.trim_end().ends_with("HTTP 422")),
        (1, true),
        "{out:?}"
    );
    let (code, _) = keyed("canceled", "bad key").await;
    assert_eq!(code, 2);
    let (_, now) = server
        .get_json(&format!("/v4/report/{fresh_id}?user_id={user}"))
        .await;
    assert_eq!(now["reportStatus"], "queued");

    // No server listening: exit 1 with a message.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (code, _, err) =
        update_status(&format!("http://{closed}"), &[&user, &id, "completed"]).await;
    assert_eq!(code, 1, "{err:?}");
    assert!(err.contains("failed"), "{err:?}");
}

fn init_dynamodb(endpoint: &str, table: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_server_sent_events"));
    command
        // Server flags go before the subcommand.
        .args(["--dynamodb-endpoint", endpoint, "--dynamodb-table", table])
        .arg("init-dynamodb")
        .env("SSE_LOG", "warn");
    command
}

#[tokio::test]
async fn init_dynamodb_creates_once_then_finds_the_table() {
    let moto = Moto::start();
    let table = unique_table();
    let (code, out, err, _) = run(&mut init_dynamodb(&moto.endpoint, &table)).await;
    assert_eq!(code, 0, "{out:?} {err:?}");
    assert!(out.contains("created"), "{out:?}");
    let (code, out, err, _) = run(&mut init_dynamodb(&moto.endpoint, &table)).await;
    assert_eq!(code, 0, "{out:?} {err:?}");
    assert!(out.contains("already exists"), "{out:?}");

    // dynamodb_local_init.sh runs the same subcommand (here the test binary, not `cargo run`).
    let other = unique_table();
    let script = || {
        let mut command = Command::new(repo_file("dynamodb_local_init.sh"));
        command
            .env("SSE_SERVER_BIN", env!("CARGO_BIN_EXE_server_sent_events"))
            .env("DYNAMODB_ENDPOINT", &moto.endpoint)
            .env("SSE_DYNAMODB_TABLE", &other)
            .env("SSE_LOG", "warn");
        command
    };
    let (code, out, err, _) = run(&mut script()).await;
    assert_eq!(
        (code, out.contains("created")),
        (0, true),
        "{out:?} {err:?}"
    );
    let (code, out, err, _) = run(&mut script()).await;
    assert_eq!(
        (code, out.contains("already exists")),
        (0, true),
        "{out:?} {err:?}"
    );
}

#[tokio::test]
async fn init_dynamodb_fails_in_bounded_time_without_dynamodb() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (code, out, err, took) = run(&mut init_dynamodb(
        &format!("http://{closed}"),
        &unique_table(),
    ))
    .await;
    assert_ne!(code, 0, "{out:?} {err:?}");
    assert!(err.contains("cannot create table"), "{err:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}
