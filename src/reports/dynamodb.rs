//! `ReportStore` on Amazon DynamoDB (or DynamoDB Local / moto through `endpoint`), via aws-sdk-dynamodb.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType,
    TableStatus,
};
use uuid::Uuid;

use super::status::ReportStatus;
use super::store::{
    ConditionalStatusWrite, Report, ReportStore, StoreError, TransitionError, timestamp,
    transition_checked,
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

#[async_trait]
impl ReportStore for DynamoStore {
    async fn create(&self, user: UserId) -> Result<Report, StoreError> {
        let report = Report::new_pending(user);
        let mut item = ReportItem::try_from(&report)?.0;
        item.insert(
            ATTR_UPDATED_AT.to_owned(),
            AttributeValue::S(format_time(report.created_at)?),
        );
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(report_id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(report),
            // Either our own first attempt landed and the SDK's retry hit the condition,
            // or (practically impossible) a v4 id collision: tell them apart by reading.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                match self.get_item(report.report_id).await? {
                    Some(item) if Report::try_from(&item).as_ref() == Ok(&report) => Ok(report),
                    _ => Err(StoreError::Unavailable(format!(
                        "report id {} already taken",
                        report.report_id
                    ))),
                }
            }
            Err(err) => Err(unavailable("PutItem", err)),
        }
    }

    async fn get(&self, user: UserId, report: ReportId) -> Result<Option<Report>, StoreError> {
        self.read(user, report).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<Report>, StoreError> {
        let mut reports = Vec::new();
        let mut start_key = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(USER_INDEX)
                .key_condition_expression("#user = :user")
                .expression_attribute_names("#user", ATTR_USER_ID)
                .expression_attribute_values(":user", s(user))
                .set_limit(self.page_size)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            for item in page.items() {
                reports.push(Report::try_from(item)?);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => break,
            }
        }
        reports.sort_by(Report::list_order);
        Ok(reports)
    }

    async fn transition(
        &self,
        user: UserId,
        report: ReportId,
        to: ReportStatus,
    ) -> Result<Report, TransitionError> {
        transition_checked(self, user, report, to).await
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

    async fn write_if(
        &self,
        user: UserId,
        report: ReportId,
        expected: ReportStatus,
        to: ReportStatus,
    ) -> Result<Option<Report>, StoreError> {
        let token = Uuid::new_v4().to_string();
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(ATTR_REPORT_ID, s(report))
            .update_expression("SET #status = :to, #updated = :now, #token = :token")
            .condition_expression("#status = :expected AND #user = :user")
            .expression_attribute_names("#status", ATTR_STATUS)
            .expression_attribute_names("#updated", ATTR_UPDATED_AT)
            .expression_attribute_names("#token", ATTR_WRITE_TOKEN)
            .expression_attribute_names("#user", ATTR_USER_ID)
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(
                ":now",
                AttributeValue::S(format_time(timestamp::now_millis())?),
            )
            .expression_attribute_values(":token", AttributeValue::S(token.clone()))
            .expression_attribute_values(":expected", s(expected))
            .expression_attribute_values(":user", s(user))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => match out.attributes() {
                Some(item) => Report::try_from(item).map(Some),
                None => Err(StoreError::Corrupt(format!(
                    "UpdateItem on {report} returned no attributes"
                ))),
            },
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                // Did an earlier attempt of this very call land (answer lost, SDK retried)?
                let Some(item) = self.get_item(report).await? else {
                    return Ok(None);
                };
                let ours =
                    matches!(item.get(ATTR_WRITE_TOKEN), Some(AttributeValue::S(t)) if *t == token);
                if ours {
                    let found = Report::try_from(&item)?;
                    Ok((found.user_id == user).then_some(found))
                } else {
                    Ok(None)
                }
            }
            Err(err) => Err(unavailable("UpdateItem", err)),
        }
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
