//! `sse-load`: a load generator for SSE servers over real loopback sockets.
//!
//! The same command measures any SSE server through URL templates (our axum server, nginx +
//! nchan, ...). Modes:
//! - `hold`: open N connections, report connect rate and the server's memory per connection.
//! - `latency`: N subscribers over U users, M messages at R/s round-robin over the users; report
//!   delivery latency percentiles, lost and duplicated deliveries, and server CPU per delivery.
//! - `fanout`: one user with N connections; per message the time until the last one received it.
//!
//! `https://` templates speak TLS (HTTP/1.1 by ALPN), trusting `--ca`; `hold
//! --h2-streams-per-conn K` opens the streams over HTTP/2 instead, K per connection.
//!
//! Human-readable lines go to stderr; the last stdout line is one JSON summary. Targets outside
//! 127.0.0.0/8 and ::1 are refused (exit 2).

mod client;
mod h2hold;
mod http;
mod payload;
mod procstat;
mod publisher;
mod sse;
mod target;
mod ticket;
mod tls;

use clap::{Args, Parser, Subcommand};
use client::{Shared, SubSpec};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use target::UrlTemplate;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Load generator for SSE servers over loopback sockets (targets must be in 127.0.0.0/8 or ::1).
#[derive(Parser, Debug)]
#[command(name = "sse-load", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open N connections, measure connect rate and server memory per connection, hold, close.
    Hold(HoldArgs),
    /// Subscribers over U users; publish M messages at R/s round-robin; delivery latency.
    Latency(LatencyArgs),
    /// One user with N connections; per message, time from publish to the last receipt.
    Fanout(FanoutArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Subscribe URL template (GET, SSE), e.g. 'http://127.0.0.1:3000/v2/sse?username=u{user}';
    /// {user} = user index, {conn} = connection index. Repeatable (several instances of a
    /// cluster): connection i uses template i mod the number given.
    #[arg(long, value_name = "URL", required = true)]
    sub: Vec<String>,
    /// Publish URL template (POST, body = message), e.g.
    /// 'http://127.0.0.1:3000/v2/message?username=u{user}'; {user} = user index,
    /// {conn} = publisher connection index. Required by latency and fanout. Repeatable:
    /// publisher connection i uses template i mod the number given.
    #[arg(long = "pub", value_name = "URL")]
    publish: Vec<String>,
    /// When a ready stream ends before the run does (say, its server was killed), reconnect,
    /// to the next `--sub` template, with `Last-Event-ID` set to the last id it received, as a
    /// browser's EventSource would; lost and duplicated messages are counted across the
    /// reconnect, and the time from the drop to the new stream's head is reported.
    #[arg(long)]
    reconnect: bool,
    /// With --reconnect: this long after publishing starts, every stream that is not on its
    /// first `--sub` template (it reconnected elsewhere) closes and moves back to it, with
    /// `Last-Event-ID`, as when a load balancer sends clients back to a restarted instance.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "reconnect")]
    rebalance_after: Option<Duration>,
    /// Server process whose PSS (/proc/PID/smaps_rollup) and CPU time (/proc/PID/stat) are
    /// read; repeatable (for nginx pass the master and the workers, or use --with-children).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Also measure the direct children of every --pid (e.g. nginx workers of the master).
    #[arg(long)]
    with_children: bool,
    /// Spread client sockets over local addresses 127.0.0.1..=127.0.0.N (bind before
    /// connect); 0 = let the kernel choose. Ignored for ::1 targets.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=254))]
    source_addrs: u8,
    /// Time limit of each phase (connect+head, publish beyond its schedule, close),
    /// e.g. 60s, 1500ms.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
    /// Connections being set up at the same time (connect until response head).
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_concurrency: usize,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Bearer token sent as `Authorization: Bearer` with every publish (servers with access
    /// control; the token needs the right to publish to every user).
    #[arg(
        long,
        env = "SSE_LOAD_BEARER",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    bearer: Option<String>,
    /// Before opening its stream, each subscriber trades this bearer token for a one-use
    /// ticket (`POST /auth/ticket` on the stream's host, on a connection of its own) and
    /// appends `ticket=...` to the stream's URL, as a browser's EventSource would.
    #[arg(
        long,
        env = "SSE_LOAD_TICKET_BEARER",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    ticket_bearer: Option<String>,
    /// Exit 1 when anything was lost, duplicated, failed or dropped (without it, exit 1 only
    /// when no connection became ready).
    #[arg(long)]
    strict: bool,
    /// PEM certificates to trust for `https://` templates (the server's own, when
    /// self-signed); required by them.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Number of SSE connections.
    #[arg(long, value_name = "N")]
    conns: usize,
    /// Number of users; connection i subscribes as user i % U (default: U = N).
    #[arg(long, value_name = "U")]
    users: Option<usize>,
    /// Wait after all connections are ready before reading memory.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    settle: Duration,
    /// How long to hold the connections open after measuring.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    hold: Duration,
    /// Open the streams over HTTP/2, this many per connection (cleartext with prior knowledge
    /// for http://, ALPN h2 for https://); memory per stream is then per stream, not per
    /// connection.
    #[arg(long, value_name = "K")]
    h2_streams_per_conn: Option<usize>,
}

#[derive(Args, Debug)]
struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Number of SSE connections (subscribers).
    #[arg(long, value_name = "N")]
    conns: usize,
    /// Number of users; connection i subscribes as user i % U, message k goes to user k % U.
    #[arg(long, value_name = "U")]
    users: usize,
    /// Number of messages to publish.
    #[arg(long, value_name = "M")]
    messages: usize,
    /// Publish rate in messages per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// Message body size in bytes (the tag needs about 30; shorter sizes are not truncated).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    size: usize,
    /// Keep-alive publisher connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub_conns: usize,
    /// Wait after subscribers are ready before publishing.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    settle: Duration,
    /// After the last publish, wait at most this long for outstanding deliveries.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    drain: Duration,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Number of SSE connections, all for the same user.
    #[arg(long, value_name = "N")]
    conns: usize,
    /// Number of messages to publish.
    #[arg(long, value_name = "M")]
    messages: usize,
    /// Time between publishes (one publisher connection, messages sent one at a time).
    #[arg(long, default_value = "100ms", value_name = "DURATION", value_parser = parse_duration)]
    interval: Duration,
    /// The user index substituted for {user}.
    #[arg(long, default_value_t = 0, value_name = "INDEX")]
    user: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    size: usize,
    /// Wait after subscribers are ready before publishing.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    settle: Duration,
    /// After the last publish, wait at most this long for outstanding deliveries.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    drain: Duration,
}

/// Parses `1.5s`, `100ms`, `250us`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad duration: {s}"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        u => return Err(format!("bad duration unit {u:?} in {s}")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration out of range: {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A refusal before any socket is opened: message and exit code 2.
struct Usage(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.mode {
        Mode::Hold(a) => a.common.threads,
        Mode::Latency(a) => a.common.threads,
        Mode::Fanout(a) => a.common.threads,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-load: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.mode {
            Mode::Hold(a) => run_hold(a).await,
            Mode::Latency(a) => run_latency(a).await,
            Mode::Fanout(a) => run_fanout(a).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok((summary, ok)) => {
            println!("{summary}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(Usage(msg)) => {
            eprintln!("sse-load: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Checked inputs shared by all modes.
struct Setup {
    sub: Vec<Arc<UrlTemplate>>,
    publish: Vec<Arc<UrlTemplate>>,
    pids: Vec<u32>,
}

fn setup(
    c: &Common,
    conns: usize,
    users: usize,
    needs_pub: bool,
    extra_fds: usize,
) -> Result<Setup, Usage> {
    let parse = |flag: &str, urls: &[String]| -> Result<Vec<Arc<UrlTemplate>>, Usage> {
        urls.iter()
            .map(|u| {
                UrlTemplate::parse(u)
                    .map(Arc::new)
                    .map_err(|e| Usage(format!("{flag}: {e}")))
            })
            .collect()
    };
    let sub = parse("--sub", &c.sub)?;
    let publish = parse("--pub", &c.publish)?;
    match &c.ca {
        Some(ca) => tls::configure(ca).map_err(Usage)?,
        None if sub.iter().chain(&publish).any(|t| t.tls) => {
            return Err(Usage("https:// templates need --ca FILE".into()));
        }
        None => {}
    }
    if needs_pub && publish.is_empty() {
        return Err(Usage("--pub is required in this mode".into()));
    }
    if conns == 0 {
        return Err(Usage("--conns must be at least 1".into()));
    }
    let mut pids = c.pids.clone();
    if c.with_children {
        for pid in c.pids.clone() {
            pids.extend(procstat::children(pid));
        }
        pids.sort_unstable();
        pids.dedup();
    }
    if let Err(e) = procstat::sample(&pids) {
        return Err(Usage(format!("cannot read server process figures: {e}")));
    }
    if users > 1 && sub.iter().chain(&publish).any(|t| !t.uses_user()) {
        eprintln!("WARNING: {users} users but a template has no {{user}}: users share one URL");
    }
    if !pids.is_empty() {
        eprintln!("measuring pids {pids:?}");
    }
    let limit = procstat::raise_nofile_limit();
    let need = conns as u64 + extra_fds as u64 + 32;
    if need > limit {
        eprintln!(
            "WARNING: {conns} connections + ~{} other descriptors exceed the open-file limit {limit}; expect failures",
            need - conns as u64
        );
    }
    Ok(Setup { sub, publish, pids })
}

fn sample(pids: &[u32]) -> procstat::Sample {
    match procstat::sample(pids) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("WARNING: reading server figures failed: {e}");
            procstat::Sample::default()
        }
    }
}

/// Figures of the connect phase.
struct Opened {
    handles: Vec<JoinHandle<()>>,
    ready: usize,
    failed: usize,
    connect_s: f64,
    ready_s: f64,
}

impl Opened {
    fn json(&self, shared: &Shared) -> Value {
        let connected = shared.connected.load(Relaxed);
        json!({
            "connected": connected,
            "ready": self.ready,
            "failed": self.failed,
            "connect_s": round3(self.connect_s),
            "connect_rate": round1(rate(connected as f64, self.connect_s)),
            "ready_s": round3(self.ready_s),
            "ready_rate": round1(rate(self.ready as f64, self.ready_s)),
        })
    }
}

fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 { n / secs } else { 0.0 }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Opens `conns` subscribers (connection i = internal user i % users) and waits, within the
/// phase timeout, until each is ready or failed.
async fn open_conns(
    c: &Common,
    tpls: &[Arc<UrlTemplate>],
    conns: usize,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Opened {
    let started_ns = shared.now_ns();
    let start = Instant::now();
    let deadline = start + c.timeout;
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(conns);
    let targets: Arc<[Arc<UrlTemplate>]> = tpls.into();
    for conn in 0..conns {
        let spec = SubSpec {
            user: conn % shared.users,
            conn,
            targets: targets.clone(),
            source_addrs: c.source_addrs,
        };
        handles.push(tokio::spawn(client::run_sub(
            spec,
            shared.clone(),
            sem.clone(),
            deadline,
            stop.clone(),
            c.timeout,
        )));
    }
    let mut last_print = Instant::now();
    loop {
        let ready = shared.ready.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        if ready + failed >= conns || Instant::now() > deadline + Duration::from_secs(1) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  connecting: {} connected, {ready} ready, {failed} failed of {conns} ({:.1}s)",
                shared.connected.load(Relaxed),
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = shared.ready.load(Relaxed);
    let failed = shared.failed.load(Relaxed);
    let secs = |ns: u64| ns.saturating_sub(started_ns) as f64 / 1e9;
    let o = Opened {
        handles,
        ready,
        failed,
        connect_s: secs(shared.last_connect_ns.load(Relaxed)),
        ready_s: secs(shared.last_ready_ns.load(Relaxed)),
    };
    eprintln!(
        "connected {} / ready {ready} / failed {failed} of {conns}: connect {:.0} conns/s, ready {:.0} conns/s",
        shared.connected.load(Relaxed),
        rate(shared.connected.load(Relaxed) as f64, o.connect_s),
        rate(ready as f64, o.ready_s)
    );
    let errs = shared.errors_snapshot();
    if !errs.is_empty() {
        eprintln!("  errors: {errs:?}");
    }
    o
}

/// Signals every connection to close and waits for them within the phase timeout.
/// [`open_conns`] over HTTP/2: `conns` streams, `per_conn` on each connection.
async fn open_h2(
    c: &Common,
    tpls: &[Arc<UrlTemplate>],
    conns: usize,
    per_conn: usize,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Opened {
    let start = Instant::now();
    let handles = h2hold::open(tpls, conns, per_conn, c.source_addrs, shared, stop);
    let mut last_print = Instant::now();
    loop {
        let (ready, failed) = (shared.ready.load(Relaxed), shared.failed.load(Relaxed));
        if ready + failed >= conns || start.elapsed() > c.timeout {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  connecting (h2): {} connections, {ready} streams ready, {failed} failed of {conns}",
                shared.connected.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    Opened {
        handles,
        ready: shared.ready.load(Relaxed),
        failed: shared.failed.load(Relaxed),
        connect_s: secs,
        ready_s: secs,
    }
}

async fn close_all(stop: &watch::Sender<bool>, handles: Vec<JoinHandle<()>>, timeout: Duration) {
    let _ = stop.send(true);
    let n = handles.len();
    let t0 = Instant::now();
    let joined = tokio::time::timeout(timeout, async {
        for h in handles {
            let _ = h.await;
        }
    })
    .await;
    match joined {
        Ok(()) => eprintln!(
            "closed {n} connections in {:.2}s",
            t0.elapsed().as_secs_f64()
        ),
        Err(_) => eprintln!("WARNING: not all connections closed within {timeout:?}"),
    }
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| round3(us as f64 / 1000.0);
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p99_9_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": round3(h.mean() / 1000.0),
    })
}

fn hist_line(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name}: no samples");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{name}: n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms mean={:.3}ms",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.mean() / 1000.0
    )
}

fn common_json(c: &Common, pids: &[u32]) -> Value {
    json!({
        "sub": c.sub,
        "pub": c.publish,
        "reconnect": c.reconnect,
        "pids": pids,
        "source_addrs": c.source_addrs,
        "timeout_s": c.timeout.as_secs_f64(),
        "connect_concurrency": c.connect_concurrency,
        "threads": c.threads,
    })
}

fn run_tag() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    payload::run_tag(nanos ^ std::process::id().rotate_left(16))
}

/// The shared state of a run, with the tokens of `c`.
fn new_shared(c: &Common, users: usize, messages: usize) -> Shared {
    let mut sh = Shared::new(users, messages, run_tag());
    sh.bearer.clone_from(&c.bearer);
    sh.ticket_bearer.clone_from(&c.ticket_bearer);
    sh.reconnect = c.reconnect;
    sh
}

async fn run_hold(a: HoldArgs) -> Result<(Value, bool), Usage> {
    let c = &a.common;
    let users = a.users.unwrap_or(a.conns).max(1);
    let s = setup(c, a.conns, users, false, 0)?;
    eprintln!(
        "hold: {} connections over {users} users to {}",
        a.conns,
        c.sub.join(" ")
    );
    let shared = Arc::new(new_shared(c, users, 0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = sample(&s.pids);
    let self_before = procstat::pss_kib(std::process::id()).unwrap_or(0);
    let mut opened = match a.h2_streams_per_conn {
        None => open_conns(c, &s.sub, a.conns, &shared, &stop_rx).await,
        Some(k) => open_h2(c, &s.sub, a.conns, k, &shared, &stop_rx).await,
    };
    tokio::time::sleep(a.settle).await;
    let after = sample(&s.pids);
    let self_after = procstat::pss_kib(std::process::id()).unwrap_or(0);
    let per_conn = |b: u64, a: u64| {
        if opened.ready == 0 {
            0.0
        } else {
            (a as f64 - b as f64) * 1024.0 / opened.ready as f64
        }
    };
    let server_per_conn = per_conn(before.pss_kib, after.pss_kib);
    let client_per_conn = per_conn(self_before, self_after);
    if !s.pids.is_empty() {
        eprintln!(
            "server PSS {} KiB -> {} KiB: {:.0} bytes per connection; server CPU {:.0} ms while connecting",
            before.pss_kib,
            after.pss_kib,
            server_per_conn,
            after.cpu_ms - before.cpu_ms
        );
    }
    eprintln!(
        "client PSS {self_before} KiB -> {self_after} KiB: {client_per_conn:.0} bytes per connection"
    );
    let hold_start = Instant::now();
    let hold_end = hold_start + a.hold;
    while Instant::now() < hold_end {
        let left = hold_end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
        eprintln!(
            "  holding: {:.0}s, {} dropped, {} events",
            hold_start.elapsed().as_secs_f64(),
            shared.dropped.load(Relaxed),
            shared.events.load(Relaxed)
        );
    }
    let held = sample(&s.pids);
    let dropped = shared.dropped.load(Relaxed);
    close_all(&stop_tx, std::mem::take(&mut opened.handles), c.timeout).await;
    let errors = shared.errors_snapshot();
    let ok = dropped == 0 && opened.failed == 0;
    let summary = json!({
        "mode": "hold",
        "params": {
            "conns": a.conns, "users": users,
            "h2_streams_per_conn": a.h2_streams_per_conn,
            "settle_s": a.settle.as_secs_f64(), "hold_s": a.hold.as_secs_f64(),
            "common": common_json(c, &s.pids),
        },
        "connect": opened.json(&shared),
        "server_pss_before_kib": before.pss_kib,
        "server_pss_after_kib": after.pss_kib,
        "server_pss_per_conn_bytes": server_per_conn.round(),
        "server_cpu_ms_connect": round1(after.cpu_ms - before.cpu_ms),
        "server_cpu_ms_hold": round1(held.cpu_ms - after.cpu_ms),
        "client_pss_per_conn_bytes": client_per_conn.round(),
        "events": shared.events.load(Relaxed),
        "dropped": dropped,
        "errors": errors,
        "lost": 0,
        "duplicated": shared.duplicated.load(Relaxed),
    });
    Ok((summary, (ok || !c.strict) && opened.ready > 0))
}

/// Waits until every acknowledged message reached every expected connection, or `drain`.
async fn drain_wait(shared: &Shared, drain: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (missing, _) = shared.missing_and_expected();
        if missing == 0 || t0.elapsed() >= drain {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Published {
    stats: publisher::PubStats,
    cpu_ms: f64,
    client_cpu_ms: f64,
    first_send_ns: u64,
    drain_s: f64,
}

/// How the publish phase runs.
struct PhaseCfg {
    pool: usize,
    period: Duration,
    size: usize,
    timeout: Duration,
    drain: Duration,
    rebalance_after: Option<Duration>,
}

/// Publishes on schedule, drains, and measures server CPU over that window.
async fn publish_phase(
    shared: &Arc<Shared>,
    tpls: Vec<Arc<UrlTemplate>>,
    pids: &[u32],
    cfg: PhaseCfg,
) -> Published {
    let PhaseCfg {
        pool,
        period,
        size,
        timeout,
        drain,
        rebalance_after,
    } = cfg;
    if let Some(after) = rebalance_after {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("rebalancing: streams away from their first target move back");
            shared.rebalance.store(true, Relaxed);
        });
    }
    let cpu_before = sample(pids);
    let me = std::process::id();
    let client_before = procstat::cpu_ms(me).unwrap_or(0.0);
    let first_send_ns = shared.now_ns();
    let schedule = period.saturating_mul(u32::try_from(shared.messages).unwrap_or(u32::MAX));
    let deadline = Instant::now() + schedule + timeout;
    eprintln!(
        "publishing {} messages, one every {:?}, over {pool} connection(s)",
        shared.messages, period
    );
    let stats = publisher::publish_all(tpls, shared.clone(), pool, period, size, deadline).await;
    eprintln!(
        "published: {} acked, {} failed, {} skipped in {:.2}s (max {:.1} ms behind schedule)",
        stats.acked,
        stats.failed,
        stats.skipped,
        stats.elapsed.as_secs_f64(),
        stats.max_behind_us as f64 / 1000.0
    );
    let drained = drain_wait(shared, drain).await;
    let cpu_after = sample(pids);
    let client_cpu_ms = procstat::cpu_ms(me).unwrap_or(0.0) - client_before;
    Published {
        stats,
        cpu_ms: cpu_after.cpu_ms - cpu_before.cpu_ms,
        client_cpu_ms,
        first_send_ns,
        drain_s: drained.as_secs_f64(),
    }
}

async fn run_latency(a: LatencyArgs) -> Result<(Value, bool), Usage> {
    let c = &a.common;
    if a.users == 0 || a.messages == 0 || !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(Usage(
            "--users, --messages and --rate must be positive".into(),
        ));
    }
    let s = setup(c, a.conns, a.users, true, a.pub_conns)?;
    let pub_tpl = s.publish.clone();
    eprintln!(
        "latency: {} connections over {} users, {} messages at {}/s to {}",
        a.conns,
        a.users,
        a.messages,
        a.rate,
        c.pub_url()
    );
    let shared = Arc::new(new_shared(c, a.users, a.messages));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut opened = open_conns(c, &s.sub, a.conns, &shared, &stop_rx).await;
    tokio::time::sleep(a.settle).await;
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let cfg = PhaseCfg {
        pool: a.pub_conns,
        period,
        size: a.size,
        timeout: c.timeout,
        drain: a.drain,
        rebalance_after: c.rebalance_after,
    };
    let p = publish_phase(&shared, pub_tpl, &s.pids, cfg).await;
    let (lost, expected) = shared.missing_and_expected();
    let deliveries = shared.deliveries.load(Relaxed);
    let dup = shared.duplicated.load(Relaxed);
    let span_s = shared
        .last_delivery_ns
        .load(Relaxed)
        .saturating_sub(p.first_send_ns) as f64
        / 1e9;
    let hist = shared
        .latency_us
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| client::new_histogram());
    let cpu_per_1000 = if deliveries > 0 {
        p.cpu_ms * 1000.0 / deliveries as f64
    } else {
        0.0
    };
    eprintln!("{}", hist_line("delivery latency", &hist));
    eprintln!(
        "deliveries {deliveries} of {expected} expected: lost {lost}, duplicated {dup}, unexpected {}, {:.0} deliveries/s; server CPU {:.0} ms = {:.2} ms per 1000 deliveries",
        shared.unexpected.load(Relaxed),
        rate(deliveries as f64, span_s),
        p.cpu_ms,
        cpu_per_1000
    );
    eprintln!(
        "load generator CPU {:.0} ms over the publish phase",
        p.client_cpu_ms
    );
    let reconnects = shared.reconnects.load(Relaxed);
    if reconnects > 0 {
        let h = shared
            .recover_us
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| client::new_histogram());
        eprintln!(
            "{reconnects} reconnections; {}",
            hist_line("drop -> new stream", &h)
        );
    }
    let dropped = shared.dropped.load(Relaxed);
    close_all(&stop_tx, std::mem::take(&mut opened.handles), c.timeout).await;
    let ok = lost == 0 && dup == 0 && opened.failed == 0 && dropped == 0 && p.stats.failed == 0;
    let summary = json!({
        "mode": "latency",
        "params": {
            "conns": a.conns, "users": a.users, "messages": a.messages, "rate": a.rate,
            "size": a.size, "pub_conns": a.pub_conns, "settle_s": a.settle.as_secs_f64(),
            "drain_s": a.drain.as_secs_f64(), "common": common_json(c, &s.pids),
        },
        "connect": opened.json(&shared),
        "published": {
            "acked": p.stats.acked, "failed": p.stats.failed, "skipped": p.stats.skipped,
            "elapsed_s": round3(p.stats.elapsed.as_secs_f64()),
            "max_behind_schedule_ms": round3(p.stats.max_behind_us as f64 / 1000.0),
        },
        "latency": hist_json(&hist),
        "expected": expected,
        "deliveries": deliveries,
        "deliveries_per_s": round1(rate(deliveries as f64, span_s)),
        "drain_wait_s": round3(p.drain_s),
        "server_cpu_ms": round1(p.cpu_ms),
        "server_cpu_ms_per_1000_deliveries": round3(cpu_per_1000),
        "client_cpu_ms": round1(p.client_cpu_ms),
        "unexpected": shared.unexpected.load(Relaxed),
        "foreign_events": shared.foreign.load(Relaxed),
        "dropped": dropped,
        "reconnects": shared.reconnects.load(Relaxed),
        "moved": shared.moved.load(Relaxed),
        "recover": shared.recover_us.lock().map(|h| hist_json(&h)).unwrap_or(Value::Null),
        "errors": shared.errors_snapshot(),
        "lost": lost,
        "duplicated": dup,
    });
    Ok((summary, (ok || !c.strict) && opened.ready > 0))
}

async fn run_fanout(a: FanoutArgs) -> Result<(Value, bool), Usage> {
    let c = &a.common;
    if a.messages == 0 || a.interval.is_zero() {
        return Err(Usage("--messages and --interval must be positive".into()));
    }
    let s = setup(c, a.conns, 1, true, 1)?;
    let pub_tpl = s.publish.clone();
    eprintln!(
        "fanout: {} connections of user {}, {} messages every {:?} to {}",
        a.conns,
        a.user,
        a.messages,
        a.interval,
        c.pub_url()
    );
    let mut sh = new_shared(c, 1, a.messages);
    sh.user_base = a.user;
    let shared = Arc::new(sh);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut opened = open_conns(c, &s.sub, a.conns, &shared, &stop_rx).await;
    tokio::time::sleep(a.settle).await;
    let cfg = PhaseCfg {
        pool: 1,
        period: a.interval,
        size: a.size,
        timeout: c.timeout,
        drain: a.drain,
        rebalance_after: c.rebalance_after,
    };
    let p = publish_phase(&shared, pub_tpl, &s.pids, cfg).await;
    let (lost, expected) = shared.missing_and_expected();
    let want = u64::from(shared.ready_per_user[0].load(Relaxed));
    let mut last = client::new_histogram();
    let mut incomplete = 0u64;
    for seq in 0..a.messages {
        if !shared.msg_acked[seq].load(Relaxed) {
            continue;
        }
        if u64::from(shared.msg_count[seq].load(Relaxed)) < want {
            incomplete += 1;
            continue;
        }
        let sent = shared.msg_sent_ns[seq].load(Relaxed);
        let done = shared.msg_last_ns[seq].load(Relaxed);
        last.saturating_record((done.saturating_sub(sent) / 1000).max(1));
    }
    let per_delivery = shared
        .latency_us
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| client::new_histogram());
    let deliveries = shared.deliveries.load(Relaxed);
    let dup = shared.duplicated.load(Relaxed);
    eprintln!("{}", hist_line("publish -> last connection", &last));
    eprintln!("{}", hist_line("per delivery", &per_delivery));
    let cpu_per_1000 = if deliveries > 0 {
        p.cpu_ms * 1000.0 / deliveries as f64
    } else {
        0.0
    };
    eprintln!(
        "deliveries {deliveries} of {expected} expected: lost {lost}, duplicated {dup}, {incomplete} messages incomplete; server CPU {:.0} ms = {:.2} ms per 1000 deliveries",
        p.cpu_ms, cpu_per_1000
    );
    eprintln!(
        "load generator CPU {:.0} ms over the publish phase",
        p.client_cpu_ms
    );
    let dropped = shared.dropped.load(Relaxed);
    close_all(&stop_tx, std::mem::take(&mut opened.handles), c.timeout).await;
    let ok = lost == 0 && dup == 0 && opened.failed == 0 && dropped == 0 && p.stats.failed == 0;
    let summary = json!({
        "mode": "fanout",
        "params": {
            "conns": a.conns, "user": a.user, "messages": a.messages,
            "interval_ms": round3(a.interval.as_secs_f64() * 1000.0), "size": a.size,
            "settle_s": a.settle.as_secs_f64(), "drain_s": a.drain.as_secs_f64(),
            "common": common_json(c, &s.pids),
        },
        "connect": opened.json(&shared),
        "published": {
            "acked": p.stats.acked, "failed": p.stats.failed, "skipped": p.stats.skipped,
            "elapsed_s": round3(p.stats.elapsed.as_secs_f64()),
        },
        "last_receipt": hist_json(&last),
        "per_delivery": hist_json(&per_delivery),
        "incomplete_messages": incomplete,
        "expected": expected,
        "deliveries": deliveries,
        "server_cpu_ms": round1(p.cpu_ms),
        "server_cpu_ms_per_1000_deliveries": round3(cpu_per_1000),
        "client_cpu_ms": round1(p.client_cpu_ms),
        "unexpected": shared.unexpected.load(Relaxed),
        "foreign_events": shared.foreign.load(Relaxed),
        "dropped": dropped,
        "errors": shared.errors_snapshot(),
        "lost": lost,
        "duplicated": dup,
    });
    Ok((summary, (ok || !c.strict) && opened.ready > 0))
}

impl Common {
    fn pub_url(&self) -> String {
        if self.publish.is_empty() {
            "-".into()
        } else {
            self.publish.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
