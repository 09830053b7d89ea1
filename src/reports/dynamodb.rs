//! `ReportStore` on Amazon DynamoDB (or DynamoDB Local / moto through `endpoint`), via aws-sdk-dynamodb.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TableStatus,
    TransactWriteItem, Update,
};
use uuid::Uuid;

use super::idempotency::{Idempotency, KeyRecord, Outcome, forgotten_before};
use super::outbox::{EventKind, OutboxEvent, OutboxPage, Written};
use super::status::ReportStatus;
use super::store::{
    ConditionalStatusWrite, Report, ReportStore, StoreError, TransitionError, WriteIf,
    recorded_outcome, timestamp, transition_checked,
};
use crate::domain::{ReportId, UserId};

/// Name of the global secondary index on `user_id` used by `list`.
pub const USER_INDEX: &str = "UserIdIndex";
/// Default table name.
pub const DEFAULT_TABLE: &str = "report_status";

const ATTR_REPORT_ID: &str = "report_id";
const ATTR_USER_ID: &str = "user_id";
const ATTR_STATUS: &str = "report_status";
const ATTR_CREATED_AT: &str = "created_at";
const ATTR_UPDATED_AT: &str = "updated_at";
/// Random id of the last conditional write, so a write whose answer was lost (and was
/// retried by the SDK into a failed condition) can recognise itself.
const ATTR_WRITE_TOKEN: &str = "write_token";
/// The key of the item `/readyz` writes: not a UUID, so never a report's.
const PROBE_KEY: &str = "_readiness_probe";
/// Outbox events are items of the same table, written in the same transaction as their
/// change: key `_outbox#<event id>` (never a report id), and this value as `user_id` (never a
/// user's UUID), so that the `UserIdIndex` lists them and no user's list holds them.
const OUTBOX_USER: &str = "_outbox";
const OUTBOX_KEY_PREFIX: &str = "_outbox#";
const ATTR_EVENT_ID: &str = "event_id";
const ATTR_EVENT_USER: &str = "event_user";
const ATTR_EVENT: &str = "event";
const ATTR_DATA: &str = "data";
const ATTR_RECORDED_AT: &str = "recorded_at";
/// Idempotency keys are items too: key `_key#<user>#<key>`, and no `user_id`, so no list and
/// no index holds them; `expires_at` (epoch seconds) suits a DynamoDB TTL on the table.
const KEY_PREFIX: &str = "_key#";
const ATTR_KEY_REQUEST: &str = "key_request";
const ATTR_KEY_REPORT: &str = "key_report";
const ATTR_EXPIRES_AT: &str = "expires_at";
/// Marks a fence: an item put at a lost write's outbox key, so that the write, should it still
/// arrive, fails its condition (see [`DynamoStore::settle_lost_write`]).
const ATTR_FENCED: &str = "fenced";
/// How long a fence is kept (a `expires_at` for a DynamoDB TTL): far longer than a request
/// can linger in a network or a stalled server.
const FENCE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Region used with a custom endpoint when none is configured.
const LOCAL_REGION: &str = "us-east-1";
/// Attempts per operation (first try included); the operation timeout bounds them all.
const MAX_ATTEMPTS: u32 = 3;
/// How long `init_table` waits for the table and its index to become ACTIVE.
const ACTIVE_WAIT: Duration = Duration::from_secs(60);

/// Connection settings for [`DynamoStore::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    /// Custom endpoint (DynamoDB Local, moto), e.g. `http://localhost:8111`; `None` for AWS.
    pub endpoint: Option<String>,
    /// Table name.
    pub table: String,
    /// AWS region; `None` uses the environment/profile chain (or `us-east-1` with an endpoint).
    pub region: Option<String>,
    /// Upper bound for one call including all its retries.
    pub operation_timeout: Duration,
    /// Upper bound for one HTTP attempt (also used as the connect timeout).
    pub attempt_timeout: Duration,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            table: DEFAULT_TABLE.to_owned(),
            region: None,
            operation_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// What [`DynamoStore::init_table`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// The table and its index were created (and are ACTIVE).
    Created,
    /// The table already existed (and is ACTIVE with its index).
    AlreadyExists,
}

/// A DynamoDB item for one report: `report_id`, `user_id`, `report_status`, `created_at`
/// (all strings; `created_at` RFC 3339 UTC with milliseconds). Extra attributes
/// (`updated_at`, `write_token`) are ignored when reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportItem(pub HashMap<String, AttributeValue>);

impl TryFrom<&Report> for ReportItem {
    type Error = StoreError;

    /// Fails with `Corrupt` only for a `created_at` outside years 0000..=9999.
    fn try_from(report: &Report) -> Result<Self, Self::Error> {
        Ok(ReportItem(HashMap::from([
            (ATTR_REPORT_ID.to_owned(), s(report.report_id)),
            (ATTR_USER_ID.to_owned(), s(report.user_id)),
            (ATTR_STATUS.to_owned(), s(report.report_status)),
            (
                ATTR_CREATED_AT.to_owned(),
                AttributeValue::S(format_time(report.created_at)?),
            ),
        ])))
    }
}

impl TryFrom<&HashMap<String, AttributeValue>> for Report {
    type Error = StoreError;

    /// Fails with `Corrupt` when an attribute is missing, not a string, or does not parse.
    fn try_from(item: &HashMap<String, AttributeValue>) -> Result<Self, Self::Error> {
        let text = |name: &str| -> Result<&str, StoreError> {
            match item.get(name) {
                Some(AttributeValue::S(value)) => Ok(value),
                Some(other) => Err(corrupt_item(
                    item,
                    format!("{name} is not a string: {other:?}"),
                )),
                None => Err(corrupt_item(item, format!("{name} is missing"))),
            }
        };
        let bad = |name: &str, value: &str, err: &dyn fmt::Display| {
            corrupt_item(item, format!("bad {name} {value:?}: {err}"))
        };
        let report_id = text(ATTR_REPORT_ID)?;
        let user_id = text(ATTR_USER_ID)?;
        let status = text(ATTR_STATUS)?;
        let created_at = text(ATTR_CREATED_AT)?;
        Ok(Report {
            report_id: report_id
                .parse()
                .map_err(|e| bad(ATTR_REPORT_ID, report_id, &e))?,
            user_id: user_id
                .parse()
                .map_err(|e| bad(ATTR_USER_ID, user_id, &e))?,
            report_status: status.parse().map_err(|e| bad(ATTR_STATUS, status, &e))?,
            created_at: timestamp::parse(created_at)
                .map_err(|e| bad(ATTR_CREATED_AT, created_at, &e))?,
        })
    }
}

impl TryFrom<ReportItem> for Report {
    type Error = StoreError;

    /// Same as the conversion from `&HashMap`.
    fn try_from(item: ReportItem) -> Result<Self, Self::Error> {
        Report::try_from(&item.0)
    }
}

fn corrupt_item(item: &HashMap<String, AttributeValue>, why: String) -> StoreError {
    let id = match item.get(ATTR_REPORT_ID) {
        Some(AttributeValue::S(id)) => id.as_str(),
        _ => "<no report_id>",
    };
    StoreError::Corrupt(format!("dynamodb item {id}: {why}"))
}

/// The outbox item of `event`.
fn outbox_item(event: &OutboxEvent) -> Result<HashMap<String, AttributeValue>, StoreError> {
    Ok(HashMap::from([
        (
            ATTR_REPORT_ID.to_owned(),
            AttributeValue::S(format!("{OUTBOX_KEY_PREFIX}{}", event.id)),
        ),
        (ATTR_USER_ID.to_owned(), s(OUTBOX_USER)),
        (ATTR_EVENT_ID.to_owned(), s(event.id)),
        (ATTR_EVENT_USER.to_owned(), s(event.user)),
        (ATTR_EVENT.to_owned(), s(event.kind.as_str())),
        (ATTR_DATA.to_owned(), s(&event.data)),
        (
            ATTR_RECORDED_AT.to_owned(),
            AttributeValue::S(format_time(event.recorded_at)?),
        ),
    ]))
}

/// The event of an outbox item; `Corrupt` when an attribute is missing or does not parse.
fn outbox_event(item: &HashMap<String, AttributeValue>) -> Result<OutboxEvent, StoreError> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value.as_str()),
        _ => Err(corrupt_item(
            item,
            format!("outbox {name} missing or not a string"),
        )),
    };
    let bad = |name: &str| corrupt_item(item, format!("bad outbox {name}"));
    Ok(OutboxEvent {
        id: text(ATTR_EVENT_ID)?
            .parse()
            .map_err(|_| bad(ATTR_EVENT_ID))?,
        user: text(ATTR_EVENT_USER)?
            .parse()
            .map_err(|_| bad(ATTR_EVENT_USER))?,
        kind: EventKind::parse(text(ATTR_EVENT)?).ok_or_else(|| bad(ATTR_EVENT))?,
        data: text(ATTR_DATA)?.to_owned(),
        recorded_at: timestamp::parse(text(ATTR_RECORDED_AT)?)
            .map_err(|_| bad(ATTR_RECORDED_AT))?,
    })
}

/// The `Put` of `event`'s outbox item inside a transaction: only if there is no item at its
/// key, so a fence put there after the write was lost makes the write fail if it comes late.
fn outbox_put(table: &str, event: &OutboxEvent) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(outbox_item(event)?))
        .condition_expression("attribute_not_exists(report_id)")
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The table key of `user`'s idempotency `key`.
fn key_item_key(user: UserId, key: &str) -> AttributeValue {
    AttributeValue::S(format!("{KEY_PREFIX}{user}#{key}"))
}

/// The `Put` of `user`'s `key`, answered with `report`, inside a transaction: only if the
/// key is not stored, or stored but expired.
fn key_put(
    table: &str,
    user: UserId,
    key: &Idempotency,
    report: &Report,
    now: time::OffsetDateTime,
) -> Result<TransactWriteItem, StoreError> {
    let json = serde_json::to_string(report)
        .map_err(|e| StoreError::Corrupt(format!("report to JSON: {e}")))?;
    let expires = (now + super::idempotency::KEY_LIFETIME).unix_timestamp();
    let put = Put::builder()
        .table_name(table)
        .item(ATTR_REPORT_ID, key_item_key(user, &key.key))
        .item(ATTR_KEY_REQUEST, s(&key.request))
        .item(ATTR_KEY_REPORT, AttributeValue::S(json))
        .item(ATTR_RECORDED_AT, AttributeValue::S(format_time(now)?))
        .item(ATTR_EXPIRES_AT, AttributeValue::N(expires.to_string()))
        .condition_expression("attribute_not_exists(report_id) OR #at < :forgotten")
        .expression_attribute_names("#at", ATTR_RECORDED_AT)
        .expression_attribute_values(
            ":forgotten",
            AttributeValue::S(format_time(forgotten_before(now))?),
        )
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The record of a key item; `Corrupt` when an attribute is missing or does not parse.
fn key_record(item: &HashMap<String, AttributeValue>) -> Result<KeyRecord, StoreError> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value.as_str()),
        _ => Err(corrupt_item(
            item,
            format!("key {name} missing or not a string"),
        )),
    };
    let bad = |name: &str| corrupt_item(item, format!("bad key {name}"));
    Ok(KeyRecord {
        request: text(ATTR_KEY_REQUEST)?.to_owned(),
        report: serde_json::from_str(text(ATTR_KEY_REPORT)?).map_err(|_| bad(ATTR_KEY_REPORT))?,
        used_at: timestamp::parse(text(ATTR_RECORDED_AT)?).map_err(|_| bad(ATTR_RECORDED_AT))?,
    })
}

/// Why a transaction was cancelled, by item: the condition of item `i` failed.
fn condition_failed<R>(err: &SdkError<TransactWriteItemsError, R>, i: usize) -> bool {
    cancellation_code(err, i).is_some_and(|code| code == "ConditionalCheckFailed")
}

/// Whether a transaction was cancelled because another one was writing the same items.
fn conflicted<R>(err: &SdkError<TransactWriteItemsError, R>) -> bool {
    (0..3).any(|i| cancellation_code(err, i).is_some_and(|code| code == "TransactionConflict"))
        || matches!(
            err.as_service_error(),
            Some(TransactWriteItemsError::TransactionInProgressException(_))
        )
}

fn cancellation_code<R>(err: &SdkError<TransactWriteItemsError, R>, i: usize) -> Option<&str> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            e.cancellation_reasons().get(i).and_then(|r| r.code())
        }
        _ => None,
    }
}

/// Whether a failed call may still have been applied: it was sent, and no answer said what
/// became of it (a timeout, a connection lost mid-request, an unreadable answer, a 5xx).
/// A refused connection, a DNS failure or a 4xx answer each say it was not.
fn ambiguous<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(failure) => {
            if failure.is_user() {
                return false;
            }
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
            while let Some(e) = source {
                if let Some(io) = e.downcast_ref::<std::io::Error>()
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::AddrNotAvailable
                            | std::io::ErrorKind::NotFound
                    )
                {
                    return false;
                }
                source = e.source();
            }
            true
        }
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => true,
    }
}

fn s(value: impl fmt::Display) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn format_time(t: time::OffsetDateTime) -> Result<String, StoreError> {
    timestamp::format(t).map_err(|e| StoreError::Corrupt(format!("unformattable timestamp: {e}")))
}

/// Any SDK failure other than a handled conditional check: connection refused, timeout,
/// throttling, missing table, validation... The store is not usable right now.
fn unavailable<E, R>(op: &str, err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: fmt::Debug,
{
    StoreError::Unavailable(format!("dynamodb {op}: {}", DisplayErrorContext(&err)))
}

fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("dynamodb request could not be built: {err}"))
}

/// Whether the environment names AWS credentials (keys, profile, web identity, container).
fn env_has_credentials(var: impl Fn(&str) -> Option<String>) -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ]
    .iter()
    .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// DynamoDB-backed [`ReportStore`].
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// How long [`DynamoStore::settle_lost_write`] may try (the operation timeout).
    fence_window: Duration,
    /// `Limit` per GSI query page in `list`; `None` lets DynamoDB pick (1 MB pages).
    page_size: Option<i32>,
}

impl fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl DynamoStore {
    /// Builds a client from the AWS environment (`aws_config::defaults`) plus `cfg`.
    ///
    /// With an `endpoint` and no AWS credentials in the environment, static dummy
    /// credentials and region `us-east-1` (unless configured) are used, so DynamoDB Local
    /// and moto work with no AWS setup. Makes no request (see [`ping`](ReportStore::ping)).
    /// Fails with `Unavailable` when no region can be determined.
    pub async fn connect(cfg: DynamoConfig) -> Result<Self, StoreError> {
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(cfg.operation_timeout)
            .operation_attempt_timeout(cfg.attempt_timeout)
            .connect_timeout(cfg.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        let env_region = env_var("AWS_REGION").or_else(|| env_var("AWS_DEFAULT_REGION"));
        match (&cfg.region, &cfg.endpoint) {
            (Some(region), _) => loader = loader.region(Region::new(region.clone())),
            (None, Some(_)) if env_region.is_none() => {
                loader = loader.region(Region::new(LOCAL_REGION));
            }
            _ => {}
        }
        if let Some(endpoint) = &cfg.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
            if !env_has_credentials(env_var) {
                loader = loader.credentials_provider(Credentials::new(
                    "dummy",
                    "dummy",
                    None,
                    None,
                    "server_sent_events-local",
                ));
            }
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(StoreError::Unavailable(
                "no AWS region configured (set AWS_REGION or the DynamoDB region option)".into(),
            ));
        }
        Ok(Self {
            client: Client::new(&sdk_config),
            table: cfg.table,
            fence_window: cfg.operation_timeout,
            page_size: None,
        })
    }

    /// Sets the `Limit` of each page `list` queries (to exercise paging); values below 1
    /// mean "DynamoDB's default".
    pub fn with_page_size(mut self, page_size: i32) -> Self {
        self.page_size = (page_size > 0).then_some(page_size);
        self
    }

    /// The table this store uses.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The underlying SDK client (for tools and tests that need raw access).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table (`report_id` hash key) and its `UserIdIndex` GSI (`user_id` hash
    /// key, projection ALL), on-demand billing, then waits until both are ACTIVE.
    /// Idempotent: an existing table gives `AlreadyExists`. Fails with `Unavailable` when
    /// DynamoDB cannot be reached, the wait times out (60 s) or an existing table lacks
    /// the index.
    pub async fn init_table(&self) -> Result<InitOutcome, StoreError> {
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(build_error)
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(USER_INDEX)
            .key_schema(key(ATTR_USER_ID, KeyType::Hash)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(build_error)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(ATTR_REPORT_ID)?)
            .attribute_definitions(attr(ATTR_USER_ID)?)
            .key_schema(key(ATTR_REPORT_ID, KeyType::Hash)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        let outcome = match created {
            Ok(_) => InitOutcome::Created,
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                InitOutcome::AlreadyExists
            }
            Err(err) => return Err(unavailable("CreateTable", err)),
        };
        self.wait_active().await?;
        Ok(outcome)
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| unavailable("DescribeTable", e))?;
            let Some(table) = described.table() else {
                return Err(StoreError::Unavailable(format!(
                    "DescribeTable {} returned no description",
                    self.table
                )));
            };
            let index = table
                .global_secondary_indexes()
                .iter()
                .find(|i| i.index_name() == Some(USER_INDEX));
            let Some(index) = index else {
                return Err(StoreError::Unavailable(format!(
                    "table {} exists without the {USER_INDEX} index; delete it or add the index",
                    self.table
                )));
            };
            let table_active = table.table_status() == Some(&TableStatus::Active);
            // DynamoDB Local may omit the index status; treat that as active.
            let index_active = index
                .index_status()
                .is_none_or(|status| status == &IndexStatus::Active);
            if table_active && index_active {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "table {} not ACTIVE after {ACTIVE_WAIT:?}",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Calls `each` with every item whose `user_id` is `user`, page by page through the
    /// `UserIdIndex`.
    async fn each_of_user(
        &self,
        user: AttributeValue,
        op: &str,
        mut each: impl FnMut(&HashMap<String, AttributeValue>) -> Result<(), StoreError> + Send,
    ) -> Result<(), StoreError> {
        let mut start_key = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(USER_INDEX)
                .key_condition_expression("#user = :user")
                .expression_attribute_names("#user", ATTR_USER_ID)
                .expression_attribute_values(":user", user.clone())
                .set_limit(self.page_size)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| unavailable(op, e))?;
            for item in page.items() {
                each(item)?;
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// Strongly consistent read of the raw item, whoever owns it.
    async fn get_item(
        &self,
        report: ReportId,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ATTR_REPORT_ID, s(report))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out.item)
    }
}

/// What became of a write whose answer was lost.
enum Settled {
    /// It landed.
    Written,
    /// It did not, and a fence makes sure it never will.
    NotWritten,
}

impl DynamoStore {
    /// Settles a transaction whose answer was lost ([`ambiguous`]) by putting a fence at its
    /// event's outbox key, unless its outbox item is there. Either the write landed (its
    /// outbox item is there: [`Settled::Written`]) or it never will (its outbox `Put` has the
    /// condition that nothing is at its key, so the write fails should it still arrive:
    /// [`Settled::NotWritten`]). Retried for the fence window; after it the outcome is
    /// unknown, an error.
    ///
    /// The relay never removes an event this young (its settle time is longer than a write
    /// and its fence together), so a missing outbox item means "not written".
    async fn settle_lost_write(&self, event: &OutboxEvent) -> Result<Settled, StoreError> {
        let deadline = tokio::time::Instant::now() + self.fence_window;
        let expires = (time::OffsetDateTime::now_utc() + FENCE_LIFETIME).unix_timestamp();
        let mut last = "no attempt finished".to_owned();
        while tokio::time::Instant::now() < deadline {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(
                    ATTR_REPORT_ID,
                    AttributeValue::S(format!("{OUTBOX_KEY_PREFIX}{}", event.id)),
                )
                .item(ATTR_FENCED, AttributeValue::Bool(true))
                .item(ATTR_EXPIRES_AT, AttributeValue::N(expires.to_string()))
                // Our own fence again (an earlier attempt's answer was lost too) is fine.
                .condition_expression("attribute_not_exists(report_id) OR #fenced = :yes")
                .expression_attribute_names("#fenced", ATTR_FENCED)
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
                .send();
            match tokio::time::timeout_at(deadline, put).await {
                Ok(Ok(_)) => return Ok(Settled::NotWritten),
                Ok(Err(e))
                    if matches!(
                        e.as_service_error(),
                        Some(PutItemError::ConditionalCheckFailedException(_))
                    ) =>
                {
                    return Ok(Settled::Written);
                }
                Ok(Err(e)) => last = DisplayErrorContext(&e).to_string(),
                Err(_) => last = "timed out".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::error!(
            event_id = %event.id,
            error = %last,
            "a DynamoDB write whose answer was lost could not be settled: its outcome is unknown \
             (if it landed, its event is still relayed)"
        );
        Err(StoreError::Unavailable(format!(
            "dynamodb: a write did not answer and its outcome could not be settled: {last}"
        )))
    }

    /// The outcome of a transaction that failed with `err`, when `err` leaves it open whether
    /// it was applied: settled by a fence. `None` when `err` says it was not applied.
    async fn settled<E: std::error::Error + 'static>(
        &self,
        err: &SdkError<E, HttpResponse>,
        event: &OutboxEvent,
    ) -> Option<Result<Settled, StoreError>> {
        if !ambiguous(err) {
            return None;
        }
        tracing::warn!(event_id = %event.id, error = %DisplayErrorContext(err), "a DynamoDB write did not answer: settling it");
        Some(self.settle_lost_write(event).await)
    }
}

/// The error of a write that a fence made sure never lands.
fn abandoned<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> StoreError {
    StoreError::Unavailable(format!(
        "dynamodb: a write did not answer and was abandoned for good: {}",
        DisplayErrorContext(err)
    ))
}

#[async_trait]
impl ReportStore for DynamoStore {
    /// One transaction: the report (if its id is new), its event's outbox item and the key.
    async fn create_keyed(
        &self,
        user: UserId,
        key: Option<Idempotency>,
    ) -> Result<Outcome, StoreError> {
        let report = Report::new_pending(user);
        let event = OutboxEvent::created(&report)?;
        let now = time::OffsetDateTime::now_utc();
        let mut item = ReportItem::try_from(&report)?.0;
        item.insert(
            ATTR_UPDATED_AT.to_owned(),
            AttributeValue::S(format_time(report.created_at)?),
        );
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(report_id)")
            .build()
            .map_err(build_error)?;
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(outbox_put(&self.table, &event)?);
        if let Some(key) = &key {
            transaction =
                transaction.transact_items(key_put(&self.table, user, key, &report, now)?);
        }
        // The same token on the SDK's retries: DynamoDB applies the transaction once.
        let written = transaction
            .client_request_token(event.id.to_string())
            .send()
            .await;
        let err = match written {
            Ok(_) => return Ok(Outcome::Written(Written { report, event })),
            Err(err) => err,
        };
        match self.settled(&err, &event).await {
            Some(Ok(Settled::Written)) => return Ok(Outcome::Written(Written { report, event })),
            Some(Ok(Settled::NotWritten)) => return Err(abandoned(&err)),
            Some(Err(unknown)) => return Err(unknown),
            None => {}
        }
        if let Some(key) = &key {
            if condition_failed(&err, 2) {
                // Another request with this key was written first: its answer stands.
                return Ok(recorded_outcome(self, user, key)
                    .await?
                    .unwrap_or(Outcome::KeyInProgress));
            }
            if conflicted(&err) {
                return Ok(Outcome::KeyInProgress);
            }
        }
        if condition_failed(&err, 0) {
            // Either our own first attempt landed and a retry hit the condition, or
            // (practically impossible) a v4 id collision: tell them apart by reading.
            return match self.get_item(report.report_id).await? {
                Some(item) if Report::try_from(&item).as_ref() == Ok(&report) => {
                    Ok(Outcome::Written(Written { report, event }))
                }
                _ => Err(StoreError::Unavailable(format!(
                    "report id {} already taken",
                    report.report_id
                ))),
            };
        }
        Err(unavailable("TransactWriteItems", err))
    }

    async fn get(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        self.read(user, report).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Report>, StoreError> {
        let mut reports = Vec::new();
        self.each_of_user(s(user), "Query", |item| {
            reports.push(Report::try_from(item)?);
            Ok(())
        })
        .await?;
        reports.sort_by(Report::list_order);
        Ok(reports)
    }

    async fn transition_keyed(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
        key: Option<Idempotency>,
    ) -> Result<Outcome, TransitionError> {
        transition_checked(self, user, report, to, key.as_ref()).await
    }

    /// The outbox items, through the `UserIdIndex` (eventually consistent: an event written
    /// a moment ago may show up on the next call).
    async fn outbox(&self, limit: usize) -> Result<OutboxPage, StoreError> {
        let mut events = Vec::new();
        let mut total = 0u64;
        self.each_of_user(s(OUTBOX_USER), "Query (outbox)", |item| {
            total += 1;
            events.push(outbox_event(item)?);
            // Keep the oldest `limit`, so a long outbox costs little memory, not all of it.
            if events.len() > limit.saturating_mul(2).max(64) {
                events.sort_by_key(|e: &OutboxEvent| (e.recorded_at, e.id));
                events.truncate(limit);
            }
            Ok(())
        })
        .await?;
        events.sort_by_key(|e| (e.recorded_at, e.id));
        events.truncate(limit);
        Ok(OutboxPage { events, total })
    }

    async fn outbox_done(&self, ids: Vec<Uuid>) -> Result<(), StoreError> {
        for id in ids {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(
                    ATTR_REPORT_ID,
                    AttributeValue::S(format!("{OUTBOX_KEY_PREFIX}{id}")),
                )
                .send()
                .await
                .map_err(|e| unavailable("DeleteItem (outbox)", e))?;
        }
        Ok(())
    }

    /// Ready means writable: puts an item of its own (its key is not a report id and it has
    /// no user, so it is in no user's list), so missing write permission, a read-only or
    /// throttled table all make the store not ready.
    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(ATTR_REPORT_ID, AttributeValue::S(PROBE_KEY.to_owned()))
            .item(
                ATTR_UPDATED_AT,
                AttributeValue::S(format_time(timestamp::now_millis())?),
            )
            .send()
            .await
            .map(drop)
            .map_err(|e| unavailable("PutItem (readiness probe)", e))
    }

    fn name(&self) -> &'static str {
        "dynamodb"
    }
}

#[async_trait]
impl ConditionalStatusWrite for DynamoStore {
    async fn read(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        let Some(item) = self.get_item(report).await? else {
            return Ok(None);
        };
        let found = Report::try_from(&item)?;
        Ok((found.user_id == user).then_some(found))
    }

    async fn read_key(&self, user: UserId, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ATTR_REPORT_ID, key_item_key(user, key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem (key)", e))?;
        out.item.as_ref().map(key_record).transpose()
    }

    /// One transaction: the conditional update, the event's outbox item and the key.
    async fn write_if(
        &self,
        current: &Report,
        to: ReportStatus,
        event: &OutboxEvent,
        key: Option<&Idempotency>,
    ) -> Result<WriteIf, StoreError> {
        let report = current.report_id;
        let token = event.id.to_string();
        let now = time::OffsetDateTime::now_utc();
        let update = Update::builder()
            .table_name(&self.table)
            .key(ATTR_REPORT_ID, s(report))
            .update_expression("SET #status = :to, #updated = :now, #token = :token")
            .condition_expression("#status = :expected AND #user = :user")
            .expression_attribute_names("#status", ATTR_STATUS)
            .expression_attribute_names("#updated", ATTR_UPDATED_AT)
            .expression_attribute_names("#token", ATTR_WRITE_TOKEN)
            .expression_attribute_names("#user", ATTR_USER_ID)
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(":now", AttributeValue::S(format_time(now)?))
            .expression_attribute_values(":token", AttributeValue::S(token.clone()))
            .expression_attribute_values(":expected", s(current.report_status))
            .expression_attribute_values(":user", s(current.user_id))
            .build()
            .map_err(build_error)?;
        let moved = Report {
            report_status: to,
            ..current.clone()
        };
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(outbox_put(&self.table, event)?);
        if let Some(key) = key {
            transaction = transaction.transact_items(key_put(
                &self.table,
                current.user_id,
                key,
                &moved,
                now,
            )?);
        }
        let err = match transaction.client_request_token(token.clone()).send().await {
            Ok(_) => return Ok(WriteIf::Written(moved)),
            Err(err) => err,
        };
        match self.settled(&err, event).await {
            Some(Ok(Settled::Written)) => return Ok(WriteIf::Written(moved)),
            Some(Ok(Settled::NotWritten)) => return Err(abandoned(&err)),
            Some(Err(unknown)) => return Err(unknown),
            None => {}
        }
        if key.is_some() && (condition_failed(&err, 2) || conflicted(&err)) {
            return Ok(WriteIf::KeyTaken);
        }
        if condition_failed(&err, 0) {
            // Did an earlier attempt of this very call land (answer lost, SDK retried)?
            let Some(item) = self.get_item(report).await? else {
                return Ok(WriteIf::Changed);
            };
            let ours =
                matches!(item.get(ATTR_WRITE_TOKEN), Some(AttributeValue::S(t)) if *t == token);
            return Ok(if ours {
                WriteIf::Written(moved)
            } else {
                WriteIf::Changed
            });
        }
        Err(unavailable("TransactWriteItems", err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_round_trip() {
        for status in ReportStatus::ALL {
            let report = Report {
                report_status: status,
                ..Report::new_pending(UserId::new_v4())
            };
            let item = ReportItem::try_from(&report).unwrap();
            assert_eq!(
                item.0.get(ATTR_STATUS),
                Some(&AttributeValue::S(status.as_str().to_owned()))
            );
            assert_eq!(
                item.0.get(ATTR_REPORT_ID),
                Some(&AttributeValue::S(report.report_id.to_string()))
            );
            assert_eq!(Report::try_from(item).unwrap(), report);
        }
    }

    #[test]
    fn extra_attributes_are_ignored() {
        let report = Report::new_pending(UserId::new_v4());
        let mut item = ReportItem::try_from(&report).unwrap();
        item.0
            .insert(ATTR_WRITE_TOKEN.into(), AttributeValue::S("x".into()));
        item.0
            .insert(ATTR_UPDATED_AT.into(), AttributeValue::N("1".into()));
        assert_eq!(Report::try_from(item).unwrap(), report);
    }

    #[test]
    fn corrupt_items_are_errors() {
        let good = ReportItem::try_from(&Report::new_pending(UserId::new_v4())).unwrap();
        let mut cases = Vec::new();
        for attr in [ATTR_REPORT_ID, ATTR_USER_ID, ATTR_STATUS, ATTR_CREATED_AT] {
            let mut missing = good.clone();
            missing.0.remove(attr);
            cases.push(missing);
            let mut wrong_type = good.clone();
            wrong_type
                .0
                .insert(attr.into(), AttributeValue::N("7".into()));
            cases.push(wrong_type);
            let mut garbage = good.clone();
            garbage
                .0
                .insert(attr.into(), AttributeValue::S("garbage".into()));
            cases.push(garbage);
        }
        for item in cases {
            assert!(
                matches!(Report::try_from(item.clone()), Err(StoreError::Corrupt(_))),
                "{item:?}"
            );
        }
    }

    #[test]
    fn credential_detection() {
        assert!(!env_has_credentials(|_| None));
        assert!(!env_has_credentials(|_| Some(String::new())));
        assert!(env_has_credentials(|k| {
            (k == "AWS_ACCESS_KEY_ID").then(|| "AKIA".to_owned())
        }));
        assert!(env_has_credentials(
            |k| (k == "AWS_PROFILE").then(|| "dev".to_owned())
        ));
    }
}
