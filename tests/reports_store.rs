//! Conformance suite for `ReportStore`: the same tests against SQLite (temp file) and DynamoDB (a real moto_server).
//!
//! DynamoDB tests start `scripts/moto_single_thread.py` with the venv made by
//! `scripts/install-moto.sh` (or `$SSE_MOTO_PYTHON`) and fail, never skip, when it is missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use server_sent_events::reports::{
    DynamoConfig, DynamoStore, EventKind, Idempotency, InitOutcome, Outcome, Report, ReportId,
    ReportStatus, ReportStore, SqliteStore, StoreError, TransitionError, UserId,
};
use time::OffsetDateTime;

use ReportStatus::*;

#[path = "common/moto.rs"]
mod moto;

use moto::{Moto, unique_table};

type Store = Arc<dyn ReportStore>;

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// Where a test's data lives; `open` gives a fresh client/connection on the same data.
enum Env {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Dynamo {
        moto: Moto,
        cfg: DynamoConfig,
    },
}

impl Env {
    fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        // A nested path proves `open` creates parent directories.
        let path = dir.path().join("nested/dir/reports.db");
        Env::Sqlite { _dir: dir, path }
    }

    async fn dynamo() -> Env {
        let moto = Moto::start();
        let cfg = DynamoConfig {
            endpoint: Some(moto.endpoint.clone()),
            table: unique_table(),
            region: None,
            operation_timeout: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(8),
        };
        let store = DynamoStore::connect(cfg.clone()).await.expect("connect");
        assert_eq!(
            store.init_table().await.expect("init_table"),
            InitOutcome::Created
        );
        assert_eq!(
            store.init_table().await.expect("init_table again"),
            InitOutcome::AlreadyExists
        );
        Env::Dynamo { moto, cfg }
    }

    async fn open(&self) -> Store {
        self.open_paged(0).await
    }

    /// A store whose `list` reads pages of `page_size` items where the backend pages.
    async fn open_paged(&self, page_size: i32) -> Store {
        match self {
            Env::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).expect("open sqlite")),
            Env::Dynamo { cfg, .. } => Arc::new(
                DynamoStore::connect(cfg.clone())
                    .await
                    .expect("connect")
                    .with_page_size(page_size),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The statuses to pass through from `pending` to reach `target`.
fn path_to(target: ReportStatus) -> &'static [ReportStatus] {
    match target {
        Pending => &[],
        Queued => &[Queued],
        Processing => &[Queued, Processing],
        Completed => &[Queued, Processing, Completed],
        Failed => &[Queued, Processing, Failed],
        Canceled => &[Canceled],
    }
}

async fn report_in(store: &Store, user: UserId, status: ReportStatus) -> Report {
    let mut report = store.create(user).await.expect("create").report;
    for &next in path_to(status) {
        report = store
            .transition(user, report.report_id, next)
            .await
            .map(|w| w.report)
            .unwrap_or_else(|e| panic!("-> {next}: {e}"));
    }
    assert_eq!(report.report_status, status);
    report
}

fn assert_invalid(result: Result<Report, TransitionError>, current: ReportStatus) {
    match result {
        Err(TransitionError::Invalid {
            current: got,
            allowed,
        }) => {
            assert_eq!(got, current);
            assert_eq!(allowed, current.allowed_next());
        }
        other => panic!("expected Invalid from {current}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The conformance tests (one body, every backend)
// ---------------------------------------------------------------------------------------

async fn create_get_list(env: Env) {
    let store = env.open().await;
    store.ping().await.expect("ping");
    let (alice, bob) = (UserId::new_v4(), UserId::new_v4());
    let before = OffsetDateTime::now_utc() - Duration::from_millis(1);
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(store.create(alice).await.expect("create").report);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let after = OffsetDateTime::now_utc();
    let bobs = store.create(bob).await.expect("create").report;

    for report in &created {
        assert_eq!(report.user_id, alice);
        assert_eq!(report.report_status, Pending);
        assert!(report.created_at >= before && report.created_at <= after);
        assert_eq!(
            report.created_at.nanosecond() % 1_000_000,
            0,
            "millisecond precision"
        );
        assert_eq!(
            store
                .get(alice, report.report_id)
                .await
                .expect("get")
                .as_ref(),
            Some(report)
        );
    }
    assert_eq!(
        store.list(alice).await.expect("list"),
        created,
        "oldest first"
    );
    assert_eq!(store.list(bob).await.expect("list"), vec![bobs]);
    assert!(store.list(UserId::new_v4()).await.expect("list").is_empty());
    assert_eq!(
        store.get(alice, ReportId::new_v4()).await.expect("get"),
        None
    );
}

async fn list_pages_through_everything(env: Env) {
    let store = env.open_paged(7).await;
    let user = UserId::new_v4();
    let other = UserId::new_v4();
    let mut expected = Vec::new();
    for i in 0..30 {
        expected.push(store.create(user).await.expect("create").report);
        if i % 10 == 0 {
            store.create(other).await.expect("create other");
        }
    }
    expected.sort_by(Report::list_order);
    if let Env::Dynamo { cfg, .. } = &env {
        // Prove the backend really pages at 7, so `list` must follow LastEvaluatedKey.
        let raw = DynamoStore::connect(cfg.clone()).await.expect("connect");
        let first = raw
            .client()
            .query()
            .table_name(raw.table())
            .index_name(server_sent_events::reports::dynamodb::USER_INDEX)
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(
                ":u",
                aws_sdk_dynamodb::types::AttributeValue::S(user.to_string()),
            )
            .limit(7)
            .send()
            .await
            .expect("raw query");
        assert_eq!(first.items().len(), 7);
        assert!(
            first.last_evaluated_key().is_some(),
            "a first page of 7 has a next page"
        );
    }
    let listed = store.list(user).await.expect("list");
    assert_eq!(listed.len(), 30, "all 30 reports, across pages of 7");
    assert_eq!(listed, expected);
    assert_eq!(store.list(other).await.expect("list").len(), 3);
}

async fn get_with_wrong_user_is_none(env: Env) {
    let store = env.open().await;
    let owner = UserId::new_v4();
    let report = store.create(owner).await.expect("create").report;
    assert_eq!(
        store
            .get(UserId::new_v4(), report.report_id)
            .await
            .expect("get"),
        None
    );
    assert!(
        store
            .get(owner, report.report_id)
            .await
            .expect("get")
            .is_some()
    );
}

async fn every_valid_transition(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    let mut count = 0;
    for from in ReportStatus::ALL {
        for &to in from.allowed_next() {
            let report = report_in(&store, user, from).await;
            let updated = store
                .transition(user, report.report_id, to)
                .await
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"))
                .report;
            assert_eq!(
                updated,
                Report {
                    report_status: to,
                    ..report.clone()
                }
            );
            assert_eq!(
                store.get(user, report.report_id).await.expect("get"),
                Some(updated)
            );
            count += 1;
        }
    }
    assert_eq!(count, 8);
}

async fn invalid_transitions_report_current_and_allowed(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    for from in ReportStatus::ALL {
        let report = report_in(&store, user, from).await;
        for to in ReportStatus::ALL {
            if from.can_transition_to(to) {
                continue;
            }
            assert_invalid(
                store
                    .transition(user, report.report_id, to)
                    .await
                    .map(|w| w.report),
                from,
            );
        }
        assert_eq!(
            store.get(user, report.report_id).await.expect("get"),
            Some(report),
            "unchanged after invalid attempts"
        );
    }
}

async fn unknown_report_is_not_found(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    store.create(user).await.expect("create");
    for to in ReportStatus::ALL {
        assert_eq!(
            store
                .transition(user, ReportId::new_v4(), to)
                .await
                .map(|w| w.report),
            Err(TransitionError::NotFound)
        );
    }
}

async fn other_users_report_is_not_found_and_unchanged(env: Env) {
    let store = env.open().await;
    let (owner, intruder) = (UserId::new_v4(), UserId::new_v4());
    let report = store.create(owner).await.expect("create").report;
    for to in ReportStatus::ALL {
        assert_eq!(
            store
                .transition(intruder, report.report_id, to)
                .await
                .map(|w| w.report),
            Err(TransitionError::NotFound)
        );
    }
    assert_eq!(
        store.get(owner, report.report_id).await.expect("get"),
        Some(report)
    );
    assert!(store.list(intruder).await.expect("list").is_empty());
}

async fn survives_reopen(env: Env) {
    let user = UserId::new_v4();
    let (first, second) = {
        let store = env.open().await;
        let first = store.create(user).await.expect("create").report;
        let second = store.create(user).await.expect("create").report;
        let second = store
            .transition(user, second.report_id, Queued)
            .await
            .expect("queue")
            .report;
        (first, second)
    };
    // A new connection / client on the same file / endpoint.
    let store = env.open().await;
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort_by(Report::list_order);
    assert_eq!(store.list(user).await.expect("list"), expected);
    assert_eq!(
        store.get(user, second.report_id).await.expect("get"),
        Some(second)
    );
    assert_eq!(
        store.get(user, first.report_id).await.expect("get"),
        Some(first)
    );
}

/// Runs `targets` concurrently against one report; returns the outcomes.
async fn race(
    store: &Store,
    user: UserId,
    report: ReportId,
    targets: Vec<ReportStatus>,
) -> Vec<Result<Report, TransitionError>> {
    let tasks = targets.into_iter().map(|to| {
        let store = Arc::clone(store);
        tokio::spawn(async move { store.transition(user, report, to).await.map(|w| w.report) })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.expect("task panicked"))
        .collect()
}

async fn fifty_concurrent_queues_one_winner(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    for round in 0..5 {
        let report = store.create(user).await.expect("create").report;
        let outcomes = race(&store, user, report.report_id, vec![Queued; 50]).await;
        let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner: {outcomes:?}"
        );
        assert_eq!(winners[0].report_status, Queued);
        for outcome in outcomes.into_iter().filter(Result::is_err) {
            assert_invalid(outcome, Queued);
        }
        let now = store.get(user, report.report_id).await.expect("get");
        assert_eq!(now.map(|r| r.report_status), Some(Queued));
    }
}

async fn processing_versus_canceled_one_winner(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    for round in 0..5 {
        let report = report_in(&store, user, Queued).await;
        let mut targets = vec![Processing; 25];
        targets.extend([Canceled; 25]);
        let outcomes = race(&store, user, report.report_id, targets).await;
        let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner: {outcomes:?}"
        );
        let final_status = winners[0].report_status;
        assert!(matches!(final_status, Processing | Canceled));
        for outcome in outcomes.into_iter().filter(Result::is_err) {
            assert_invalid(outcome, final_status);
        }
        let now = store.get(user, report.report_id).await.expect("get");
        assert_eq!(now.map(|r| r.report_status), Some(final_status));
    }
}

/// Every write records exactly its own event, atomically: a refused or lost transition
/// records nothing, and relayed events leave the outbox.
async fn outbox_records_every_write_and_only_those(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    let created = store.create(user).await.expect("create");
    assert_eq!(created.event.kind, EventKind::Created);
    assert_eq!(created.event.user, user);
    assert_eq!(
        created.event.data,
        serde_json::to_string(&created.report).unwrap()
    );
    let queued = store
        .transition(user, created.report.report_id, Queued)
        .await
        .expect("queue");
    assert_eq!(queued.event.kind, EventKind::StatusUpdate);
    assert_eq!(
        queued.event.data,
        format!(
            r#"{{"id":"{}","status":"queued"}}"#,
            created.report.report_id
        )
    );
    // Refused (invalid, unknown, another user's): nothing recorded.
    assert!(
        store
            .transition(user, created.report.report_id, Completed)
            .await
            .is_err()
    );
    assert!(
        store
            .transition(user, ReportId::new_v4(), Queued)
            .await
            .is_err()
    );
    assert!(
        store
            .transition(UserId::new_v4(), created.report.report_id, Processing)
            .await
            .is_err()
    );
    // Ten racing writers, one winner: one event.
    let raced = store.create(user).await.expect("create");
    let outcomes = race(&store, user, raced.report.report_id, vec![Queued; 10]).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);

    let page = store.outbox(100).await.expect("outbox");
    assert_eq!(page.total, 4, "{page:?}");
    assert_eq!(page.events.len(), 4);
    assert!(page.events.iter().all(|e| e.user == user));
    assert!(page.events.contains(&created.event));
    assert!(page.events.contains(&queued.event));
    assert!(page.events.contains(&raced.event));
    assert!(
        page.events
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at),
        "oldest first"
    );
    let first_two = store.outbox(2).await.expect("outbox");
    assert_eq!(first_two.total, 4);
    assert_eq!(first_two.events.len(), 2);

    store
        .outbox_done(vec![
            created.event.id,
            queued.event.id,
            uuid::Uuid::new_v4(),
        ])
        .await
        .expect("done");
    let page = store.outbox(100).await.expect("outbox");
    assert_eq!(page.total, 2);
    assert!(!page.events.contains(&created.event));
    store
        .outbox_done(page.events.iter().map(|e| e.id).collect())
        .await
        .expect("done");
    assert_eq!(store.outbox(100).await.expect("outbox").total, 0);
    // Outbox items are nobody's reports.
    assert_eq!(store.list(user).await.expect("list").len(), 2);
}

fn key(key: &str, request: &str) -> Option<Idempotency> {
    Some(Idempotency {
        key: key.to_owned(),
        request: request.to_owned(),
    })
}

/// Issue 11: a used key answers its first request's report, writes nothing and records no
/// event; the same key for another request, or another user's same key, is told apart.
async fn idempotency_keys_replay_and_refuse(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    let create = "POST /v4/new/report";
    let Outcome::Written(first) = store.create_keyed(user, key("k1", create)).await.unwrap() else {
        panic!("first keyed create not written");
    };
    let again = store.create_keyed(user, key("k1", create)).await.unwrap();
    assert_eq!(again, Outcome::Replayed(first.report.clone()));
    // Through a new connection too: the key is in the store, not in this client.
    let reopened = env.open().await;
    assert_eq!(
        reopened
            .create_keyed(user, key("k1", create))
            .await
            .unwrap(),
        Outcome::Replayed(first.report.clone())
    );
    let id = first.report.report_id;
    let queue = format!("PUT /v4/report {id} queued");
    assert_eq!(
        store
            .transition_keyed(user, id, Queued, key("k1", &queue))
            .await
            .unwrap(),
        Outcome::KeyReused {
            first: create.to_owned()
        }
    );
    // Another user's key of the same name is theirs.
    let other = UserId::new_v4();
    assert!(matches!(
        store.create_keyed(other, key("k1", create)).await.unwrap(),
        Outcome::Written(_)
    ));
    // A keyed change, replayed after the report moved on: the first answer stands.
    let Outcome::Written(queued) = store
        .transition_keyed(user, id, Queued, key("k2", &queue))
        .await
        .unwrap()
    else {
        panic!("keyed transition not written");
    };
    store.transition(user, id, Processing).await.unwrap();
    assert_eq!(
        store
            .transition_keyed(user, id, Queued, key("k2", &queue))
            .await
            .unwrap(),
        Outcome::Replayed(queued.report.clone())
    );
    // A refused change records no key: the same key may then be used for a valid one.
    let cancel = format!("PUT /v4/report {id} canceled");
    assert_invalid(
        store
            .transition_keyed(user, id, Canceled, key("k3", &cancel))
            .await
            .map(|o| o.written().unwrap().report),
        Processing,
    );
    let complete = format!("PUT /v4/report {id} completed");
    assert!(matches!(
        store
            .transition_keyed(user, id, Completed, key("k3", &complete))
            .await
            .unwrap(),
        Outcome::Written(_)
    ));
    // One report and one event per written request; none for the replays.
    assert_eq!(store.list(user).await.unwrap().len(), 1);
    let events = store.outbox(100).await.unwrap();
    let mine: Vec<_> = events.events.iter().filter(|e| e.user == user).collect();
    assert_eq!(mine.len(), 4, "{mine:?}");
}

/// Issue 11: twenty identical keyed creates at once: one report and one event; every answer
/// is that report, or "in progress" for one that overlapped the first.
async fn concurrent_keyed_creates_write_once(env: Env) {
    let store = env.open().await;
    let user = UserId::new_v4();
    let outcomes = join_all((0..20).map(|_| {
        let store = Arc::clone(&store);
        async move {
            store
                .create_keyed(user, key("same", "POST /v4/new/report"))
                .await
        }
    }))
    .await;
    let reports = store.list(user).await.unwrap();
    assert_eq!(reports.len(), 1, "{outcomes:?}");
    let mut written = 0;
    for outcome in outcomes {
        match outcome.unwrap() {
            Outcome::Written(w) => {
                written += 1;
                assert_eq!(w.report, reports[0]);
            }
            Outcome::Replayed(report) => assert_eq!(report, reports[0]),
            Outcome::KeyInProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(written, 1);
    let events = store.outbox(100).await.unwrap();
    assert_eq!(events.events.iter().filter(|e| e.user == user).count(), 1);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Env::sqlite()).await;
                }
            )*

            #[test]
            fn name_is_sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let store = super::SqliteStore::open(&dir.path().join("r.db")).unwrap();
                assert_eq!(super::ReportStore::name(&store), "sqlite");
            }
        }

        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Env::dynamo().await).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn store_down_is_unavailable_in_time() {
                super::dynamo_store_down_is_unavailable_in_time().await;
            }
        }
    };
}

conformance!(
    create_get_list,
    list_pages_through_everything,
    get_with_wrong_user_is_none,
    every_valid_transition,
    invalid_transitions_report_current_and_allowed,
    unknown_report_is_not_found,
    other_users_report_is_not_found_and_unchanged,
    survives_reopen,
    fifty_concurrent_queues_one_winner,
    processing_versus_canceled_one_winner,
    outbox_records_every_write_and_only_those,
    idempotency_keys_replay_and_refuse,
    concurrent_keyed_creates_write_once,
);

// ---------------------------------------------------------------------------------------
// DynamoDB only: the store going away
// ---------------------------------------------------------------------------------------

async fn dynamo_store_down_is_unavailable_in_time() {
    let Env::Dynamo { mut moto, cfg } = Env::dynamo().await else {
        unreachable!()
    };
    let operation_timeout = Duration::from_secs(3);
    let store: Store = Arc::new(
        DynamoStore::connect(DynamoConfig {
            operation_timeout,
            attempt_timeout: Duration::from_secs(1),
            ..cfg
        })
        .await
        .expect("connect"),
    );
    assert_eq!(store.name(), "dynamodb");
    let user = UserId::new_v4();
    let report = store.create(user).await.expect("create while up").report;
    store.ping().await.expect("ping while up");

    moto.kill();

    let limit = operation_timeout + Duration::from_secs(1);
    macro_rules! down {
        ($what:literal, $call:expr) => {{
            let started = Instant::now();
            let result = $call.await;
            let took = started.elapsed();
            assert!(took <= limit, "{} took {took:?} (limit {limit:?})", $what);
            result
        }};
    }
    let unavailable = |e: StoreError| matches!(e, StoreError::Unavailable(_));
    assert!(down!("ping", store.ping()).is_err_and(unavailable));
    assert!(down!("create", store.create(user)).is_err_and(unavailable));
    assert!(down!("get", store.get(user, report.report_id)).is_err_and(unavailable));
    assert!(down!("list", store.list(user)).is_err_and(unavailable));
    match down!(
        "transition",
        store.transition(user, report.report_id, Queued)
    ) {
        Err(TransitionError::Store(StoreError::Unavailable(msg))) => {
            assert!(msg.contains("dynamodb"), "{msg}");
        }
        other => panic!("expected Store(Unavailable), got {other:?}"),
    }
}
