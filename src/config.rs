//! One typed configuration, read from flags and environment variables (`--help` lists all).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Command line of the `server_sent_events` binary.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "server_sent_events",
    version,
    about = "Server-Sent Events push server"
)]
pub struct Cli {
    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands besides serving.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Create the DynamoDB table and its `UserIdIndex` index if they do not exist (idempotent),
    /// at `--dynamodb-endpoint` or with the normal AWS configuration, then exit.
    InitDynamodb,
    /// Print a token signed with `--jwt-secret` (HS256), for development; refuses without a
    /// secret.
    Token {
        /// The identity (`sub`): a username for /v2 and /v3, a user UUID for /v4.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes: `publish`, `admin`.
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// A secret from the command line or the environment; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Where reports are stored.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// DynamoDB when `--dynamodb-endpoint` is set, SQLite otherwise.
    Auto,
    /// The embedded SQLite file at `--database`.
    Sqlite,
    /// DynamoDB (AWS, DynamoDB Local, or any DynamoDB-API server).
    Dynamodb,
}

/// Every setting of the server. Each flag can also be set by the environment variable shown in
/// `--help`; durations accept `200ms`, `3s`, `1m`.
#[derive(Parser, Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SSE_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1, chosen by ALPN) instead of
    /// cleartext. Needs `--tls-key`. Both files are read again on SIGHUP and when they change,
    /// so a renewal does not cut open streams.
    #[arg(long, env = "SSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "SSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Interval between `data: hi!` events on /v1/sse.
    #[arg(long, env = "SSE_V1_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub v1_interval: Duration,

    /// Idle time after which /v1/sse sends a `: keep-alive-text` comment.
    #[arg(long, env = "SSE_V1_KEEP_ALIVE", default_value = "3s", value_parser = parse_duration)]
    pub v1_keep_alive: Duration,

    /// Idle time after which v2+ streams get a `: keep-alive-text` comment.
    #[arg(long, env = "SSE_KEEP_ALIVE", default_value = "30s", value_parser = parse_duration)]
    pub keep_alive: Duration,

    /// Reconnection delay suggested to clients with `retry:` when a stream opens.
    #[arg(long, env = "SSE_RETRY", default_value = "2s", value_parser = parse_duration)]
    pub retry: Duration,

    /// Frames a connection may have waiting; a connection whose queue is full is closed (the
    /// client resumes with Last-Event-ID) so it never slows anyone else down.
    #[arg(long, env = "SSE_QUEUE_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue_size: u32,

    /// Bytes a connection may have waiting (replayed history included); over it the connection
    /// is closed as a slow consumer, and a replay that would not fit gets `event: reset`.
    #[arg(long, env = "SSE_QUEUE_MAX_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1u64 << 32)))]
    pub queue_max_bytes: u64,

    /// Messages kept per user and channel for replay to reconnecting clients.
    #[arg(long, env = "SSE_HISTORY_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub history_size: u32,

    /// Bytes all replay histories together may hold; the oldest entries go first beyond it.
    #[arg(long, env = "SSE_HISTORY_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// How long a user's history is kept after their last connection closed and last message.
    #[arg(long, env = "SSE_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// How long this instance remembers a `/v2` or `/v3` message's `Idempotency-Key`: a retry
    /// within it is answered as the first request was and not delivered again.
    #[arg(long, env = "SSE_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// Most message keys remembered at once (the oldest are forgotten first beyond it); each
    /// costs up to about 500 bytes.
    #[arg(long, env = "SSE_IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub idempotency_max_keys: u64,

    /// Largest accepted request body; larger ones get 413 without being read.
    #[arg(long, env = "SSE_MAX_BODY_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Origin allowed by CORS (repeatable, or comma-separated in the environment variable):
    /// `scheme://host[:port]`, or `*` for any origin (then without credentials).
    #[arg(
        long,
        env = "SSE_CORS_ORIGIN",
        value_delimiter = ',',
        default_value = "http://localhost:5173",
        value_parser = parse_origin
    )]
    pub cors_origin: Vec<String>,

    /// How long shutdown waits for responses to finish before closing connections.
    #[arg(long, env = "SSE_SHUTDOWN_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Report store: `auto` picks DynamoDB when `--dynamodb-endpoint` is set, else SQLite.
    #[arg(long, env = "SSE_STORE", value_enum, default_value = "auto")]
    pub store: StoreKind,

    /// SQLite database file for reports (created with its folder if missing).
    #[arg(long, env = "SSE_DATABASE", default_value = "data/reports.sqlite3")]
    pub database: PathBuf,

    /// DynamoDB endpoint, e.g. `http://localhost:8111` for DynamoDB Local. Unset: the AWS
    /// default endpoint (with `--store dynamodb`).
    #[arg(long, global = true, env = "DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,

    /// DynamoDB table of reports.
    #[arg(
        long,
        global = true,
        env = "SSE_DYNAMODB_TABLE",
        default_value = "report_status"
    )]
    pub dynamodb_table: String,

    /// AWS region for DynamoDB (default: the AWS configuration chain, else `us-east-1`).
    #[arg(long, global = true, env = "SSE_DYNAMODB_REGION")]
    pub dynamodb_region: Option<String>,

    /// Longest a store operation may take (retries included) before the request gets 503.
    #[arg(long, global = true, env = "SSE_STORE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub store_timeout: Duration,

    /// Kafka bootstrap servers, e.g. `127.0.0.1:9092`. Unset: no Kafka, in-process delivery.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Kafka topic carrying `/v3` messages (`username:message`).
    #[arg(long, env = "SSE_KAFKA_TOPIC_V3", default_value = "v3_messages")]
    pub kafka_topic_v3: String,

    /// Kafka topic carrying `/v4` report events.
    #[arg(long, env = "SSE_KAFKA_TOPIC_V4", default_value = "v4_messages")]
    pub kafka_topic_v4: String,

    /// Longest a publish waits for the broker's acknowledgement before answering 503.
    #[arg(long, env = "SSE_KAFKA_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,

    /// Longest the Kafka consumer's fetch waits at the broker for new records. Kafka answers
    /// as soon as a record arrives, so this costs no latency there; a broker that holds every
    /// fetch for this long (tansu 0.6.0) adds up to it to each delivery.
    #[arg(long, env = "SSE_KAFKA_FETCH_WAIT", default_value = "100ms", value_parser = parse_duration)]
    pub kafka_fetch_wait: Duration,

    /// Records per partition an instance reads back from the Kafka log at start-up (within
    /// `--history-ttl`) into the histories, so clients resuming here get what they missed.
    #[arg(long, env = "SSE_KAFKA_HISTORY_RECORDS", default_value_t = 10_000)]
    pub kafka_history_records: u64,

    /// Most records an instance may be behind the Kafka log's end and still be ready
    /// (`/readyz`); it is not ready either before its read-back is done.
    #[arg(long, env = "SSE_KAFKA_READY_LAG", default_value_t = 1_000)]
    pub kafka_ready_lag: u64,

    /// How often the Kafka topics' partitions are listed again, so added partitions are
    /// consumed without a restart.
    #[arg(long, env = "SSE_KAFKA_METADATA_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub kafka_metadata_refresh: Duration,

    /// Folder of the built dashboard, served at `/` when it exists.
    #[arg(
        long,
        env = "SSE_STATIC_DIR",
        default_value = "server_sent_events_frontend/dist"
    )]
    pub static_dir: PathBuf,

    /// Threads serving connections. Default: every core the process may run on
    /// (`available_parallelism`, which respects CPU affinity and cgroup quotas). Each thread
    /// runs its own event loop and keeps the connections it was given (see `net::cores`;
    /// figures in BENCHMARKS.md, "Every core").
    #[arg(long, env = "SSE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Streams (SSE responses) open at once, all users together; over it a stream request gets
    /// `503` with `Retry-After`. Default: the open-file limit minus a reserve (a tenth, 64 to
    /// 1,024) that keeps `/healthz`, `/readyz`, `/metrics` and POSTs working when it is reached.
    #[arg(long, env = "SSE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Streams one user may hold open on one channel (off by default: one user may
    /// legitimately fan out to thousands of tabs or devices); over it: `429`.
    #[arg(long, env = "SSE_MAX_CONNECTIONS_PER_USER", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: Option<u32>,

    /// Streams one client address may hold open (an IPv6 client counts by its /64). Off by
    /// default: every client behind a proxy shares its address. Over it: `429`.
    #[arg(long, env = "SSE_MAX_CONNECTIONS_PER_IP", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: Option<u32>,

    /// Proxy whose `X-Forwarded-For` names the client (repeatable, or comma-separated in the
    /// environment variable): an address or a network such as `10.0.0.0/8`.
    #[arg(long, env = "SSE_TRUSTED_PROXY", value_delimiter = ',', value_parser = crate::limits::parse_proxy)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Messages per second one publisher (client address) may post, reports included; over it:
    /// `429` with `Retry-After`. Off by default: trusted back-ends publish thousands a second.
    #[arg(long, env = "SSE_PUBLISH_RATE", value_parser = parse_rate)]
    pub publish_rate: Option<f64>,

    /// Messages a publisher may post at once before `--publish-rate` applies (default: one
    /// second's worth, at least 1).
    #[arg(long, env = "SSE_PUBLISH_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_burst: Option<u32>,

    /// A stream whose client accepts no byte for this long while data waits for it is closed
    /// (`sse_write_timeouts_total`); it resumes with Last-Event-ID.
    #[arg(long, env = "SSE_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `server_sent_events=debug`.
    #[arg(long, global = true, env = "SSE_LOG", default_value = "info")]
    pub log: String,

    /// Access control: `none` (everything open; loopback only) or `jwt` (JSON Web Tokens).
    #[arg(long, env = "SSE_AUTH", value_enum, default_value_t = crate::auth::Mode::None)]
    pub auth: crate::auth::Mode,

    /// HS256 secret of the tokens (at least 32 bytes); no default.
    #[arg(long, global = true, env = "SSE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM file of the public key of the tokens: RSA (RS256), EC P-256 (ES256) or Ed25519
    /// (EdDSA); the key's type fixes the algorithm.
    #[arg(long, env = "SSE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// URL of a JWKS document: keys chosen by the tokens' `kid`, fetched when a `kid` is new
    /// (at most every 5 s, bounded to 5 s).
    #[arg(long, env = "SSE_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Required `iss` of the tokens (a token without it is refused).
    #[arg(long, env = "SSE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of the tokens (a token without it is refused).
    #[arg(long, env = "SSE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`.
    #[arg(long, env = "SSE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Key of stream tickets (at least 32 bytes), the same on every instance behind one load
    /// balancer; unset: a random key of this process (tickets work on the issuing instance).
    #[arg(long, env = "SSE_TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<Secret>,

    /// Serve without access control on a non-loopback `--bind` address. Without it the server
    /// refuses to start there: anyone who can reach the port could read and send every user's
    /// messages and reports.
    #[arg(long, env = "SSE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

impl Config {
    /// Threads serving connections: `--worker-threads`, else every core the process may use.
    pub fn worker_threads(&self) -> usize {
        match self.worker_threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// The store `--store` resolves to.
    pub fn store_kind(&self) -> StoreKind {
        match self.store {
            StoreKind::Auto if self.dynamodb_endpoint.is_some() => StoreKind::Dynamodb,
            StoreKind::Auto => StoreKind::Sqlite,
            other => other,
        }
    }

    /// Refuses a configuration that would expose the open server beyond this machine: a
    /// non-loopback `--bind` without `--insecure-no-auth`. The message names the flags to use.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.auth == crate::auth::Mode::Jwt
            || self.bind.ip().is_loopback()
            || self.insecure_no_auth
        {
            return Ok(());
        }
        Err(format!(
            "refusing to serve without access control on {}, which is not a loopback address: \
             anyone who can reach it could read and publish every user's streams and reports. \
             Turn access control on (--auth jwt with --jwt-secret or --jwt-public-key), bind a \
             loopback address (--bind 127.0.0.1:{}), or accept the risk explicitly with \
             --insecure-no-auth (SSE_INSECURE_NO_AUTH=true)",
            self.bind,
            self.bind.port()
        ))
    }

    /// The access control settings, reading `--jwt-public-key`; a clear message when the file
    /// cannot be read.
    pub fn auth_config(&self) -> Result<crate::auth::AuthConfig, String> {
        let public_key_pem = match &self.jwt_public_key {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(crate::auth::AuthConfig {
            mode: self.auth,
            secret: self.jwt_secret.as_ref().map(|s| s.0.clone()),
            public_key_pem,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            ticket_secret: self.ticket_secret.as_ref().map(|s| s.0.clone()),
            jwks_url: self.jwks_url.clone(),
        })
    }

    /// The stream and publish budgets this configuration asks for, with `--max-connections`
    /// derived from `open_files` (the process's open-file limit) when not set.
    pub fn limits(&self, open_files: Option<u64>) -> crate::limits::LimitsConfig {
        let max_streams = match (self.max_connections, open_files) {
            (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
            (None, Some(files)) => crate::limits::default_max_streams(files),
            (None, None) => usize::MAX,
        };
        crate::limits::LimitsConfig {
            max_streams,
            max_streams_per_ip: self.max_connections_per_ip,
            trusted_proxies: self.trusted_proxy.clone(),
            publish_rate: self.publish_rate,
            publish_burst: self
                .publish_burst
                .unwrap_or_else(|| self.publish_rate.map_or(1, |r| r.ceil().max(1.0) as u32)),
        }
    }

    /// The default configuration with the given bind address, for tests and embedding.
    pub fn for_tests(bind: SocketAddr) -> Self {
        let mut config = Config::parse_from(["server_sent_events"]);
        config.bind = bind;
        config
    }
}

/// Parses a positive duration such as `200ms`, `3s` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected e.g. 200ms, 3s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

/// Parses a positive rate in messages per second, e.g. `100` or `0.5`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{text:?} is not a positive rate (messages per second, e.g. 100 or 0.5)"
        )),
    }
}

/// Parses a CORS origin: `*` (any origin) or `http(s)://host[:port]` as browsers send it in
/// the `Origin` header (no path, no trailing slash, no whitespace).
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(text.to_owned());
    }
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    let valid = rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an origin (expected `*` or scheme://host[:port], e.g. https://app.example)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let c = Config::parse_from(["x"]);
        assert_eq!(c.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(c.v1_interval, Duration::from_secs(15));
        assert_eq!(c.v1_keep_alive, Duration::from_secs(3));
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.cors_origin, vec!["http://localhost:5173"]);
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(Config::try_parse_from(["x", "--queue-size", "0"]).is_err());
        let c = Config::parse_from([
            "x",
            "--cors-origin",
            "http://a",
            "--cors-origin",
            "http://b",
        ]);
        assert_eq!(c.cors_origin, vec!["http://a", "http://b"]);
        let c = Config::parse_from(["x", "--cors-origin", "*"]);
        assert_eq!(c.cors_origin, vec!["*"]);
        for bad in [
            "",
            "app.example",
            "http://",
            "http://a/path",
            "http://a b",
            "ftp://a",
        ] {
            assert!(
                Config::try_parse_from(["x", "--cors-origin", bad]).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_origin("https://[::1]:8443").is_ok());
    }

    #[test]
    fn the_open_server_stays_on_loopback_unless_told_otherwise() {
        for bind in ["127.0.0.1:3000", "[::1]:3000", "127.0.0.9:1"] {
            assert!(
                Config::parse_from(["x", "--bind", bind])
                    .check_exposure()
                    .is_ok()
            );
        }
        for bind in ["0.0.0.0:3000", "[::]:3000", "192.168.1.5:3000"] {
            let refused = Config::parse_from(["x", "--bind", bind]).check_exposure();
            let message = refused.expect_err(bind);
            assert!(message.contains("--insecure-no-auth"), "{message}");
            assert!(message.contains("--bind 127.0.0.1:3000"), "{message}");
            let allowed = Config::parse_from(["x", "--bind", bind, "--insecure-no-auth"]);
            assert!(allowed.check_exposure().is_ok());
        }
    }
}
