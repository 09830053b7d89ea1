//! `/v4` over HTTP against both report stores (SQLite file, DynamoDB on a real moto_server):
//! events to every tab of the user only, list/get, every error status, transitions, restart,
//! 50-way races, the store going down.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use server_sent_events::config::Config;
use server_sent_events::reports::{DynamoConfig, DynamoStore, InitOutcome};
use uuid::Uuid;

use crate::moto::{Moto, unique_table};
use crate::support::{Sse, TestServer, json_of};

/// Which report store a test's server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Dynamodb,
}

/// A server on one backend. For DynamoDB it owns moto and the table, so a second server can
/// share the data; stopped servers are kept so their SQLite folder outlives them.
pub struct Fixture {
    pub server: TestServer,
    backend: Backend,
    tweak: fn(&mut Config),
    moto: Option<Moto>,
    table: String,
    retired: Vec<TestServer>,
}

impl Fixture {
    pub async fn start(backend: Backend) -> Fixture {
        Self::start_with(backend, |_| {}).await
    }

    /// A server whose configuration `tweak` changes after the backend settings.
    pub async fn start_with(backend: Backend, tweak: fn(&mut Config)) -> Fixture {
        let table = unique_table();
        let moto = match backend {
            Backend::Sqlite => None,
            Backend::Dynamodb => {
                let moto = Moto::start();
                let store = DynamoStore::connect(DynamoConfig {
                    endpoint: Some(moto.endpoint.clone()),
                    table: table.clone(),
                    ..DynamoConfig::default()
                })
                .await
                .expect("connect to moto");
                assert_eq!(
                    store.init_table().await.expect("create the table"),
                    InitOutcome::Created
                );
                Some(moto)
            }
        };
        let server = launch(moto.as_ref(), &table, None, tweak).await;
        Fixture {
            server,
            backend,
            tweak,
            moto,
            table,
            retired: Vec::new(),
        }
    }

    /// Stops the server and starts a new one on the same data (SQLite file or moto table).
    pub async fn restart(&mut self) {
        self.server.shutdown().await;
        let database = self.server.data_dir.path().join("reports.sqlite3");
        let next = launch(self.moto.as_ref(), &self.table, Some(database), self.tweak).await;
        let old = std::mem::replace(&mut self.server, next);
        self.retired.push(old);
    }

    /// Kills moto (DynamoDB only): the store goes down.
    pub fn kill_store(&mut self) {
        self.moto
            .as_mut()
            .expect("only DynamoDB can be killed")
            .kill();
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Dynamodb => "dynamodb",
        }
    }
}

async fn launch(
    moto: Option<&Moto>,
    table: &str,
    database: Option<std::path::PathBuf>,
    tweak: fn(&mut Config),
) -> TestServer {
    let endpoint = moto.map(|m| m.endpoint.clone());
    let table = table.to_owned();
    TestServer::start_with(move |c| {
        if let Some(database) = database {
            c.database = database;
        }
        if let Some(endpoint) = endpoint {
            c.dynamodb_endpoint = Some(endpoint);
            c.dynamodb_table = table;
            // Generous: moto answers one request at a time, the races queue 50 of them.
            c.store_timeout = Duration::from_secs(10);
        }
        tweak(c);
    })
    .await
}

/// One test body, run once per backend.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn dynamodb() {
                super::$name(Backend::Dynamodb).await;
            }
        }
    )*};
}

on_both_stores!(
    created_reports_reach_every_tab_of_their_user_only,
    list_and_get_are_per_user,
    bad_requests_get_json_errors_and_change_nothing,
    every_transition_answers_and_publishes_once,
    reports_survive_a_restart,
    fifty_concurrent_queues_one_winner,
    processing_versus_canceled_one_winner,
    idempotency_keys_make_retries_safe,
);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub fn new_user() -> String {
    Uuid::new_v4().to_string()
}

/// Creates a report for `user` (asserting 201) and returns its JSON.
pub async fn create(server: &TestServer, user: &str) -> Value {
    let (status, body) = server
        .post(&format!("/v4/new/report?user_id={user}"), "")
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn put_status(server: &TestServer, user: &str, report: &str, to: &str) -> (u16, Value) {
    let body = json!({ "id": report, "status": to }).to_string();
    server
        .put_json(&format!("/v4/report?user_id={user}"), body)
        .await
}

async fn tab(server: &TestServer, user: &str) -> Sse {
    Sse::open(&server.url(&format!("/v4/sse?user_id={user}")), None).await
}

/// The next event of `sse`: its type, its data (which must be JSON), the raw data and its id
/// (which must be there).
async fn next_event(sse: &mut Sse) -> (String, Value, String, String) {
    let event = sse.next().await;
    assert!(!event.id.is_empty(), "v4 events carry an id: {event:?}");
    let data = serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", event.data));
    (event.event, data, event.data, event.id)
}

/// Asserts `(status, body)` is `expected` with a JSON `{"error": "<non-empty>"}`.
fn assert_error(got: (u16, Value), expected: u16, what: &str) {
    let (status, body) = got;
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: error body {body}"
    );
}

fn status_of(report: &Value) -> &str {
    report["reportStatus"].as_str().expect("reportStatus")
}

fn id_of(report: &Value) -> &str {
    report["reportId"].as_str().expect("reportId")
}

/// Moves a fresh report of `user` through `path` and returns it.
async fn report_in(server: &TestServer, user: &str, path: &[&str]) -> Value {
    let mut report = create(server, user).await;
    for to in path {
        let (status, body) = put_status(server, user, id_of(&report), to).await;
        assert_eq!(status, 200, "-> {to}: {body}");
        report = body;
    }
    report
}

// ---------------------------------------------------------------------------------------
// Bodies run on both stores
// ---------------------------------------------------------------------------------------

async fn created_reports_reach_every_tab_of_their_user_only(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let (alice, bob) = (new_user(), new_user());
    let mut tab1 = tab(s, &alice).await;
    let mut tab2 = tab(s, &alice).await;
    let mut bobs = tab(s, &bob).await;

    let before = time::OffsetDateTime::now_utc() - Duration::from_millis(1);
    let report = create(s, &alice).await;
    let fields: Vec<&str> = report
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        ["createdAt", "reportId", "reportStatus", "userId"],
        "{report}"
    );
    assert_eq!(report["userId"], alice.as_str());
    assert_eq!(status_of(&report), "pending");
    assert!(Uuid::parse_str(id_of(&report)).is_ok());
    let created_at = time::OffsetDateTime::parse(
        report["createdAt"].as_str().expect("createdAt"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("createdAt is RFC 3339");
    assert!(created_at >= before && created_at <= time::OffsetDateTime::now_utc());

    let mut ids = Vec::new();
    for t in [&mut tab1, &mut tab2] {
        let (event, data, _, id) = next_event(t).await;
        assert_eq!(event, "report_created");
        assert_eq!(data, report);
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "one message, one id on every tab");
    bobs.expect_silence(Duration::from_millis(300)).await;
    tab1.expect_silence(Duration::from_millis(100)).await;

    // Upper-case ids name the same user (the stream key is the canonical form).
    let upper = alice.to_uppercase();
    let mut tab3 = tab(s, &upper).await;
    let second = create(s, &upper).await;
    assert_eq!(second["userId"], alice.as_str());
    for t in [&mut tab1, &mut tab2, &mut tab3] {
        let (event, data, ..) = next_event(t).await;
        assert_eq!((event.as_str(), &data), ("report_created", &second));
    }

    let (status, body) = s.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"]["store"],
        json!({ "backend": f.backend_name(), "status": "ok" })
    );
    assert_eq!(body["checks"]["kafka"], "disabled");
}

async fn list_and_get_are_per_user(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let (alice, bob) = (new_user(), new_user());
    let (status, body) = s.get_json(&format!("/v4/reports?user_id={alice}")).await;
    assert_eq!((status, body), (200, json!([])));

    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(create(s, &alice).await);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let bobs = create(s, &bob).await;

    let (status, list) = s.get_json(&format!("/v4/reports?user_id={alice}")).await;
    assert_eq!(status, 200);
    assert_eq!(list, Value::Array(created.clone()), "oldest first");
    let (_, list) = s.get_json(&format!("/v4/reports?user_id={bob}")).await;
    assert_eq!(list, json!([bobs]));

    for report in &created {
        let got = s
            .get_json(&format!("/v4/report/{}?user_id={alice}", id_of(report)))
            .await;
        assert_eq!(got, (200, report.clone()));
    }
    // Another user's report, an unknown id and a non-UUID id are all simply not there.
    for (path, what) in [
        (
            format!("/v4/report/{}?user_id={alice}", id_of(&bobs)),
            "bob's",
        ),
        (
            format!("/v4/report/{}?user_id={alice}", Uuid::new_v4()),
            "unknown",
        ),
        (format!("/v4/report/not-a-uuid?user_id={alice}"), "non-UUID"),
    ] {
        assert_error(s.get_json(&path).await, 404, what);
    }
}

async fn bad_requests_get_json_errors_and_change_nothing(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let (alice, bob) = (new_user(), new_user());
    let mut alices = tab(s, &alice).await;
    let report = create(s, &alice).await;
    let id = id_of(&report).to_owned();
    next_event(&mut alices).await;
    let bobs_report = create(s, &bob).await;

    // user_id: missing, empty, not a UUID, repeated; on every route.
    for query in [
        "",
        "?user_id=",
        "?user_id=abc",
        &format!("?user_id={alice}&user_id={alice}"),
    ] {
        let what = format!("user_id query {query:?}");
        assert_error(s.get_json(&format!("/v4/sse{query}")).await, 400, &what);
        assert_error(s.get_json(&format!("/v4/reports{query}")).await, 400, &what);
        assert_error(
            s.get_json(&format!("/v4/report/{id}{query}")).await,
            400,
            &what,
        );
        assert_error(
            s.post(&format!("/v4/new/report{query}"), "").await,
            400,
            &what,
        );
        let body = json!({ "id": id, "status": "queued" }).to_string();
        assert_error(
            s.put_json(&format!("/v4/report{query}"), body).await,
            400,
            &what,
        );
    }

    let put = format!("/v4/report?user_id={alice}");
    // Content-Type must be JSON.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = s.request(reqwest::Method::PUT, &put);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let body = json!({ "id": id, "status": "queued" }).to_string();
        let got = json_of(request.body(body).send().await.unwrap()).await;
        assert_error(got, 415, &format!("content type {content_type:?}"));
    }
    // Parameters of the media type are fine (checked with an invalid status to change nothing).
    let got = json_of(
        s.request(reqwest::Method::PUT, &put)
            .header("content-type", "Application/JSON; charset=utf-8")
            .body(json!({ "id": id, "status": "nope" }).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(got, 422, "charset parameter, unknown status");

    // Malformed JSON: 400.
    for body in ["", "{", "{\"id\": ", "not json", "{\"id\":\"x\",}"] {
        assert_error(s.put_json(&put, body).await, 400, &format!("body {body:?}"));
    }
    // Well-formed JSON of the wrong shape, a non-UUID id, an unknown status: 422.
    for body in [
        json!({ "id": id }),
        json!({ "status": "queued" }),
        json!({ "id": 5, "status": "queued" }),
        json!({ "id": id, "status": null }),
        json!("queued"),
        json!({ "id": "not-a-uuid", "status": "queued" }),
        json!({ "id": id, "status": "done" }),
        json!({ "id": id, "status": "QUEUED" }),
    ] {
        assert_error(
            s.put_json(&put, body.to_string()).await,
            422,
            &format!("body {body}"),
        );
    }
    // Over --max-body-bytes: 413.
    let big = format!(
        r#"{{"id":"{id}","status":"queued","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    assert_error(s.put_json(&put, big).await, 413, "oversized body");

    // Unknown report, and bob's report through alice: 404, and bob's stays as it was.
    let (status, body) = put_status(s, &alice, &Uuid::new_v4().to_string(), "queued").await;
    assert_error((status, body), 404, "unknown report");
    let (status, body) = put_status(s, &alice, id_of(&bobs_report), "queued").await;
    assert_error((status, body), 404, "bob's report");
    let (_, now) = s
        .get_json(&format!("/v4/report/{}?user_id={bob}", id_of(&bobs_report)))
        .await;
    assert_eq!(now, bobs_report);

    // Wrong method: 405.
    let got = json_of(
        s.request(reqwest::Method::DELETE, &put)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(got, 405, "DELETE");

    // None of that changed alice's report or sent her an event.
    let (_, now) = s
        .get_json(&format!("/v4/report/{id}?user_id={alice}"))
        .await;
    assert_eq!(now, report);
    alices.expect_silence(Duration::from_millis(300)).await;
}

async fn every_transition_answers_and_publishes_once(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let user = new_user();
    let mut tabs = [tab(s, &user).await, tab(s, &user).await];
    let report = create(s, &user).await;
    let id = id_of(&report).to_owned();
    for t in &mut tabs {
        assert_eq!(next_event(t).await.0, "report_created");
    }

    // Every valid transition at least once, ending in the final state.
    let walk = [
        "queued",
        "processing",
        "failed",
        "pending",
        "canceled",
        "pending",
        "queued",
        "canceled",
        "pending",
        "queued",
        "processing",
        "completed",
    ];
    for to in walk {
        let (status, body) = put_status(s, &user, &id, to).await;
        assert_eq!(status, 200, "-> {to}: {body}");
        assert_eq!(status_of(&body), to);
        assert_eq!(body["reportId"], id.as_str());
        assert_eq!(body["userId"], user.as_str());
        assert_eq!(body["createdAt"], report["createdAt"]);
        let mut ids = Vec::new();
        for t in &mut tabs {
            let (event, _, raw, event_id) = next_event(t).await;
            assert_eq!(event, "report_status_update");
            assert_eq!(raw, format!(r#"{{"id":"{id}","status":"{to}"}}"#));
            ids.push(event_id);
        }
        assert_eq!(ids[0], ids[1], "one message, one id on every tab");
    }
    for t in &mut tabs {
        t.expect_silence(Duration::from_millis(200)).await;
    }

    // 409s carry the current status and what is allowed from it.
    let (status, body) = put_status(s, &user, &id, "pending").await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({
            "error": "cannot change report status from completed to pending",
            "currentStatus": "completed",
            "allowed": [],
        })
    );
    let fresh = create(s, &user).await;
    let (status, body) = put_status(s, &user, id_of(&fresh), "completed").await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({
            "error": "cannot change report status from pending to completed",
            "currentStatus": "pending",
            "allowed": ["queued", "canceled"],
        })
    );
    // Self-transitions are refused too.
    let (status, body) = put_status(s, &user, id_of(&fresh), "pending").await;
    assert_eq!(
        (status, body["currentStatus"].as_str()),
        (409, Some("pending"))
    );
    for t in &mut tabs {
        // Only the creation of `fresh`; no event for a refused change.
        let (event, data, ..) = next_event(t).await;
        assert_eq!((event.as_str(), &data), ("report_created", &fresh));
        t.expect_silence(Duration::from_millis(200)).await;
    }
    let (_, now) = s.get_json(&format!("/v4/report/{id}?user_id={user}")).await;
    assert_eq!(status_of(&now), "completed");
}

/// A keyed write: (status, body).
async fn keyed(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.request(method, path).header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    json_of(request.send().await.unwrap()).await
}

/// Issue 11: `Idempotency-Key` on create and change: 20 identical creates at once make one
/// report and one event; a replayed change answers as the first did and sends nothing; a key
/// reused for another change is a 422 that changes nothing; a malformed key a 400. On
/// DynamoDB, a second instance on the same table honours the keys the first recorded.
async fn idempotency_keys_make_retries_safe(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let user = new_user();
    let mut tab = tab(s, &user).await;
    let create_path = format!("/v4/new/report?user_id={user}");
    let answers = join_all(
        (0..20).map(|_| keyed(s, reqwest::Method::POST, &create_path, "\"create-1\"", None)),
    )
    .await;
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let report = created[0].clone();
    for (status, body) in &answers {
        match status {
            201 | 200 => assert_eq!(body, &report),
            409 => assert!(body["error"].as_str().unwrap().contains("in progress")),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (_, list) = s.get_json(&format!("/v4/reports?user_id={user}")).await;
    assert_eq!(list, json!([report]));
    let (event, data, ..) = next_event(&mut tab).await;
    assert_eq!((event.as_str(), &data), ("report_created", &report));
    tab.expect_silence(Duration::from_millis(300)).await;
    // A retry later, bare this time: the same report, 200.
    assert_eq!(
        keyed(s, reqwest::Method::POST, &create_path, "create-1", None).await,
        (200, report.clone())
    );

    let id = id_of(&report).to_owned();
    let put_path = format!("/v4/report?user_id={user}");
    let queue = json!({ "id": id, "status": "queued" });
    let (status, queued) = keyed(
        s,
        reqwest::Method::PUT,
        &put_path,
        "q-1",
        Some(queue.clone()),
    )
    .await;
    assert_eq!((status, status_of(&queued)), (200, "queued"), "{queued}");
    assert_eq!(next_event(&mut tab).await.0, "report_status_update");
    assert_eq!(
        keyed(
            s,
            reqwest::Method::PUT,
            &put_path,
            "q-1",
            Some(queue.clone())
        )
        .await,
        (200, queued.clone())
    );
    let cancel = json!({ "id": id, "status": "canceled" });
    assert_error(
        keyed(s, reqwest::Method::PUT, &put_path, "q-1", Some(cancel)).await,
        422,
        "a key reused for another change",
    );
    assert_error(
        keyed(s, reqwest::Method::POST, &create_path, "q-1", None).await,
        422,
        "a key reused for another route",
    );
    assert_error(
        keyed(
            s,
            reqwest::Method::PUT,
            &put_path,
            "\"open",
            Some(queue.clone()),
        )
        .await,
        400,
        "a malformed key",
    );
    tab.expect_silence(Duration::from_millis(300)).await;
    let (_, now) = s.get_json(&format!("/v4/report/{id}?user_id={user}")).await;
    assert_eq!(status_of(&now), "queued");
    let (_, list) = s.get_json(&format!("/v4/reports?user_id={user}")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    if backend == Backend::Dynamodb {
        let other = launch(f.moto.as_ref(), &f.table, None, f.tweak).await;
        assert_eq!(
            keyed(&other, reqwest::Method::PUT, &put_path, "q-1", Some(queue)).await,
            (200, queued)
        );
        assert_eq!(
            keyed(
                &other,
                reqwest::Method::POST,
                &create_path,
                "create-1",
                None
            )
            .await,
            (200, report)
        );
        other.stop().await;
        tab.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn reports_survive_a_restart(backend: Backend) {
    let mut f = Fixture::start(backend).await;
    let user = new_user();
    let kept = report_in(&f.server, &user, &["queued", "processing"]).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let other = create(&f.server, &user).await;

    f.restart().await;
    let s = &f.server;
    let (status, list) = s.get_json(&format!("/v4/reports?user_id={user}")).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([kept, other]));
    // And the restarted server carries on from the stored status.
    let mut t = tab(s, &user).await;
    let (status, body) = put_status(s, &user, id_of(&kept), "completed").await;
    assert_eq!((status, status_of(&body)), (200, "completed"));
    let (event, data, ..) = next_event(&mut t).await;
    assert_eq!(event, "report_status_update");
    assert_eq!(data, json!({ "id": id_of(&kept), "status": "completed" }));
}

/// Sends every `(user, report, status)` PUT at once; returns the answers in order.
async fn race(s: &TestServer, user: &str, report: &str, statuses: &[&str]) -> Vec<(u16, Value)> {
    join_all(statuses.iter().map(|to| put_status(s, user, report, to))).await
}

async fn fifty_concurrent_queues_one_winner(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let user = new_user();
    let report = create(s, &user).await;
    let id = id_of(&report).to_owned();
    let mut t = tab(s, &user).await;

    let answers = race(s, &user, &id, &["queued"; 50]).await;
    let ok: Vec<_> = answers.iter().filter(|(st, _)| *st == 200).collect();
    let conflicts: Vec<_> = answers.iter().filter(|(st, _)| *st == 409).collect();
    assert_eq!(
        (ok.len(), conflicts.len()),
        (1, 49),
        "statuses: {:?}",
        answers.iter().map(|(st, _)| st).collect::<Vec<_>>()
    );
    assert_eq!(status_of(&ok[0].1), "queued");
    for (_, body) in &conflicts {
        assert_eq!(body["currentStatus"], "queued", "{body}");
        assert_eq!(body["allowed"], json!(["processing", "canceled"]));
    }
    let (event, data, ..) = next_event(&mut t).await;
    assert_eq!(event, "report_status_update");
    assert_eq!(data, json!({ "id": id, "status": "queued" }));
    t.expect_silence(Duration::from_millis(500)).await;
}

async fn processing_versus_canceled_one_winner(backend: Backend) {
    let f = Fixture::start(backend).await;
    let s = &f.server;
    let user = new_user();
    let report = report_in(s, &user, &["queued"]).await;
    let id = id_of(&report).to_owned();
    let mut t = tab(s, &user).await;

    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.extend(["processing", "canceled"]);
    }
    let answers = race(s, &user, &id, &statuses).await;
    let winners: Vec<_> = answers.iter().filter(|(st, _)| *st == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "statuses: {:?}",
        answers.iter().map(|(st, _)| st).collect::<Vec<_>>()
    );
    assert!(
        answers.iter().all(|(st, _)| *st == 200 || *st == 409),
        "{answers:?}"
    );
    let won = status_of(&winners[0].1).to_owned();
    let (_, now) = s.get_json(&format!("/v4/report/{id}?user_id={user}")).await;
    assert_eq!(status_of(&now), won);
    let (event, data, ..) = next_event(&mut t).await;
    assert_eq!(event, "report_status_update");
    assert_eq!(data, json!({ "id": id, "status": won }));
    t.expect_silence(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------------------
// DynamoDB only: the store going down
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn store_down_answers_503_in_time_and_streams_stay_open() {
    const STORE_TIMEOUT: Duration = Duration::from_secs(2);
    let mut f = Fixture::start_with(Backend::Dynamodb, |c| c.store_timeout = STORE_TIMEOUT).await;
    let user = new_user();
    let report = create(&f.server, &user).await;
    let id = id_of(&report).to_owned();
    let mut v4 = tab(&f.server, &user).await;
    let mut v2 = Sse::open(&f.server.url("/v2/sse?username=watcher"), None).await;

    f.kill_store();
    let s = &f.server;
    // Reads answer within the store timeout plus a second; writes may take a second store
    // timeout to settle a write whose answer was lost (README, "The report store").
    let read_limit = STORE_TIMEOUT + Duration::from_secs(2);
    let write_limit = 2 * STORE_TIMEOUT + Duration::from_secs(2);
    let calls: Vec<(&str, reqwest::Method, String, Option<String>)> = vec![
        (
            "PUT",
            reqwest::Method::PUT,
            format!("/v4/report?user_id={user}"),
            Some(json!({ "id": id, "status": "queued" }).to_string()),
        ),
        (
            "POST",
            reqwest::Method::POST,
            format!("/v4/new/report?user_id={user}"),
            None,
        ),
        (
            "GET list",
            reqwest::Method::GET,
            format!("/v4/reports?user_id={user}"),
            None,
        ),
        (
            "GET one",
            reqwest::Method::GET,
            format!("/v4/report/{id}?user_id={user}"),
            None,
        ),
    ];
    for (what, method, path, body) in calls {
        let started = Instant::now();
        let mut request = s.request(method, &path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let got = json_of(request.send().await.unwrap()).await;
        let took = started.elapsed();
        let limit = if what.starts_with("GET") {
            read_limit
        } else {
            write_limit
        };
        assert!(took <= limit, "{what} took {took:?} (limit {limit:?})");
        assert_error(got, 503, what);
    }

    let started = Instant::now();
    let (status, body) = s.get_json("/readyz").await;
    assert!(
        started.elapsed() <= read_limit,
        "/readyz took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["store"]["backend"], "dynamodb");
    assert_eq!(body["checks"]["store"]["status"], "down");
    assert!(body["checks"]["store"]["error"].is_string(), "{body}");
    assert_eq!(body["checks"]["kafka"], "disabled");

    // No event for the failed writes, both streams still open, v2 still delivers.
    v4.expect_silence(Duration::from_millis(300)).await;
    s.wait_metric(r#"sse_connections_open{channel="v4"}"#, 1.0)
        .await;
    s.wait_metric(r#"sse_connections_open{channel="v2"}"#, 1.0)
        .await;
    let (status, _) = s.post("/v2/message?username=watcher", "still here").await;
    assert_eq!(status, 200);
    assert_eq!(v2.next().await.data, "still here");
}

/// Issue 11: DynamoDB stopped (SIGSTOP) while writes are in flight, longer than the store
/// timeout, then resumed: every answer is the truth. A create sent into the stopped store is
/// settled by a fence once it answers again (201, and it is there, with one event); whatever
/// a change answered, the store and the stream agree with it, also well after.
#[tokio::test]
async fn a_store_stopped_mid_request_answers_the_truth() {
    const STORE_TIMEOUT: Duration = Duration::from_secs(2);
    let f = Fixture::start_with(Backend::Dynamodb, |c| c.store_timeout = STORE_TIMEOUT).await;
    let s = &f.server;
    let user = new_user();
    let report = create(s, &user).await;
    let id = id_of(&report).to_owned();
    let mut tab = tab(s, &user).await;
    let moto = f.moto.as_ref().unwrap();

    moto.signal("STOP");
    let started = Instant::now();
    let post = tokio::spawn(
        s.request(
            reqwest::Method::POST,
            &format!("/v4/new/report?user_id={user}"),
        )
        .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let put = tokio::spawn(
        s.request(reqwest::Method::PUT, &format!("/v4/report?user_id={user}"))
            .header("content-type", "application/json")
            .body(json!({ "id": id, "status": "queued" }).to_string())
            .send(),
    );
    // Past the store timeout: both requests gave up waiting and are being settled.
    tokio::time::sleep(STORE_TIMEOUT + Duration::from_millis(500)).await;
    moto.signal("CONT");
    let (post_status, created) = json_of(post.await.unwrap().unwrap()).await;
    let (put_status, changed) = json_of(put.await.unwrap().unwrap()).await;
    let took = started.elapsed();
    assert!(
        took < 2 * STORE_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        post_status, 201,
        "the create was sent, so it landed: {created}"
    );
    assert!(matches!(put_status, 200 | 503), "{put_status}: {changed}");

    // Well after: the store and the stream say what the answers said, and nothing else.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, list) = s.get_json(&format!("/v4/reports?user_id={user}")).await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&id_of(&created)), "{list}");
    let (_, now) = s.get_json(&format!("/v4/report/{id}?user_id={user}")).await;
    let expected = if put_status == 200 {
        "queued"
    } else {
        "pending"
    };
    assert_eq!(
        status_of(&now),
        expected,
        "answered {put_status}: {changed}"
    );
    let mut events = vec![next_event(&mut tab).await.0];
    if put_status == 200 {
        events.push(next_event(&mut tab).await.0);
        events.sort();
    }
    let mut want = vec!["report_created".to_owned()];
    if put_status == 200 {
        want.push("report_status_update".to_owned());
    }
    assert_eq!(events, want);
    tab.expect_silence(Duration::from_millis(500)).await;
}
