//! Budgets and rate limits in one place: open streams (globally and per client address), the
//! publish rate per publisher, and who the client is behind a trusted proxy.
//!
//! Every check answers at once: a refused request gets its status (`503` when the server is
//! full, `429` when one client is over its share) with `Retry-After`, never a wait. The limit
//! on connections per user lives in the Hub, where a user's connections are counted under the
//! lock that registers them.
//!
//! Memory is bounded by configuration too: the per-address table only holds addresses with an
//! open stream, and the publish table at most [`MAX_PUBLISHERS`] entries.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Publishers tracked by the publish rate limiter. Beyond it, buckets that are full again (as
/// good as absent) are dropped; if all are in use, new publishers share one overflow bucket,
/// so a flood from many addresses cannot grow the table.
pub const MAX_PUBLISHERS: usize = 65_536;

/// Suggested wait after a refused stream.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Settings of [`Limits`].
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Streams open at once, all users together.
    pub max_streams: usize,
    /// Streams open at once from one client address (`None`: no limit).
    pub max_streams_per_ip: Option<u32>,
    /// Addresses whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Messages per second per publisher (`None`: no limit).
    pub publish_rate: Option<f64>,
    /// Messages a publisher may send at once before the rate applies.
    pub publish_burst: u32,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The server holds its maximum of streams (`503`).
    Full {
        /// The limit.
        limit: usize,
    },
    /// This client address holds its maximum of streams (`429`).
    PerIp {
        /// The limit.
        limit: u32,
    },
    /// This user holds its maximum of streams on the channel (`429`).
    PerUser {
        /// The limit.
        limit: usize,
    },
    /// The publisher is over its rate (`429`).
    Rate {
        /// When the next publish would be allowed.
        retry_after: Duration,
    },
}

impl Refusal {
    /// How long the client should wait before trying again (whole seconds, at least one).
    pub fn retry_after_secs(&self) -> u64 {
        let wait = match self {
            Refusal::Rate { retry_after } => *retry_after,
            _ => STREAM_RETRY_AFTER,
        };
        wait.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Whether this is the server being full (`503`) rather than one client over its share.
    pub fn is_overload(&self) -> bool {
        matches!(self, Refusal::Full { .. })
    }

    /// A short name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "max_connections",
            Refusal::PerIp { .. } => "max_connections_per_ip",
            Refusal::PerUser { .. } => "max_connections_per_user",
            Refusal::Rate { .. } => "publish_rate",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { limit } => write!(
                f,
                "the server holds its maximum of {limit} streams; try again later"
            ),
            Refusal::PerIp { limit } => write!(
                f,
                "this client address already holds {limit} streams, the most allowed"
            ),
            Refusal::PerUser { limit } => write!(
                f,
                "this user already holds {limit} streams on this channel, the most allowed"
            ),
            Refusal::Rate { .. } => write!(f, "publish rate exceeded; slow down"),
        }
    }
}

/// The shared budgets. Cheap to check: an atomic for the global count, short critical sections
/// for the per-address tables.
pub struct Limits {
    cfg: LimitsConfig,
    streams: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    publishers: Mutex<Publishers>,
}

/// Holds one stream's place in the budgets; dropping it gives the place back.
pub struct StreamPermit {
    limits: Arc<Limits>,
    /// The address it counts against, when `--max-connections-per-ip` is on. Boxed: every
    /// stream holds a permit, and without the per-address limit this is one pointer.
    ip: Option<Box<IpAddr>>,
}

impl Limits {
    /// Budgets with the given settings, nothing in use.
    pub fn new(cfg: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            streams: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            publishers: Mutex::new(Publishers::default()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LimitsConfig {
        &self.cfg
    }

    /// Streams open now (those holding a permit).
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    /// address of `X-Forwarded-For` that is not itself a trusted proxy. Only the peer's own
    /// word counts otherwise, so a client cannot pick its address.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?.ip());
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        // Right to left: each hop was appended by the proxy before it.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','));
        for hop in hops {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: stop at the last address we could trust.
                break;
            };
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        Some(client)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.cfg.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Takes a place for a stream from `ip`, or says which limit refuses it.
    pub fn open_stream(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<StreamPermit, Refusal> {
        let limit = self.cfg.max_streams;
        if self
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::Full { limit });
        }
        let ip = match (self.cfg.max_streams_per_ip, ip) {
            (Some(max), Some(ip)) => {
                let key = bucket_key(ip);
                let mut table = lock(&self.per_ip);
                let count = table.entry(key).or_insert(0);
                // `max` is at least 1, so a refused address never leaves a zero entry behind.
                if *count >= max {
                    drop(table);
                    self.streams.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refusal::PerIp { limit: max });
                }
                *count += 1;
                Some(Box::new(key))
            }
            _ => None,
        };
        Ok(StreamPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Spends one publish of `publisher`'s budget at `now`, or says when the next one would be
    /// allowed. Always allowed when `--publish-rate` is off.
    pub fn publish(&self, publisher: Option<IpAddr>, now: Instant) -> Result<(), Refusal> {
        let Some(rate) = self.cfg.publish_rate else {
            return Ok(());
        };
        let burst = f64::from(self.cfg.publish_burst.max(1));
        let key = publisher.map(bucket_key);
        lock(&self.publishers).spend(key, rate, burst, now)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            let mut table = lock(&self.limits.per_ip);
            if let Some(count) = table.get_mut(&*ip) {
                *count -= 1;
                if *count == 0 {
                    table.remove(&*ip);
                }
            }
        }
        self.limits.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `tokens` at `at`, refilled at the configured rate up to the burst.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[derive(Default)]
struct Publishers {
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by publishers without an address or beyond [`MAX_PUBLISHERS`].
    overflow: Option<Bucket>,
}

impl Publishers {
    fn spend(
        &mut self,
        key: Option<IpAddr>,
        rate: f64,
        burst: f64,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(ip) = key
            && !self.buckets.contains_key(&ip)
            && self.buckets.len() >= MAX_PUBLISHERS
        {
            // Full buckets carry no state: forget them to make room.
            self.buckets
                .retain(|_, b| b.refilled(rate, burst, now) < burst);
        }
        let slot = match key {
            Some(ip) if self.buckets.len() < MAX_PUBLISHERS || self.buckets.contains_key(&ip) => {
                self.buckets.entry(ip).or_insert(Bucket {
                    tokens: burst,
                    at: now,
                })
            }
            _ => self.overflow.get_or_insert(Bucket {
                tokens: burst,
                at: now,
            }),
        };
        let tokens = slot.refilled(rate, burst, now);
        if tokens >= 1.0 {
            *slot = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            return Ok(());
        }
        *slot = Bucket { tokens, at: now };
        Err(Refusal::Rate {
            retry_after: Duration::from_secs_f64((1.0 - tokens) / rate),
        })
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client has one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one host usually has a
/// whole /64, so counting single addresses would let it pick as many as it likes).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// Parses a `--trusted-proxy` value: an address (`10.0.0.1`) or a network (`10.0.0.0/8`).
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or network (e.g. 10.0.0.1 or 10.0.0.0/8)"))
}

/// The open-file limit of this process (the soft `RLIMIT_NOFILE`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// File descriptors kept free of streams for `/healthz`, `/readyz`, `/metrics`, POSTs, the
/// store and the Kafka client: a tenth of the limit, at least 64 and at most 1,024.
pub fn fd_reserve(open_files: u64) -> u64 {
    (open_files / 10).clamp(64, 1024)
}

/// The default `--max-connections` for an open-file limit: what is left after the reserve
/// (never below 1).
pub fn default_max_streams(open_files: u64) -> usize {
    open_files.saturating_sub(fd_reserve(open_files)).max(1) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the table consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cfg: impl FnOnce(&mut LimitsConfig)) -> Arc<Limits> {
        let mut c = LimitsConfig {
            max_streams: 100,
            max_streams_per_ip: None,
            trusted_proxies: Vec::new(),
            publish_rate: None,
            publish_burst: 1,
        };
        cfg(&mut c);
        Limits::new(c)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_global_limit_refuses_and_gives_places_back() {
        let l = limits(|c| c.max_streams = 2);
        let a = l.open_stream(None).unwrap();
        let _b = l.open_stream(None).unwrap();
        assert_eq!(l.open_stream(None).err(), Some(Refusal::Full { limit: 2 }));
        assert_eq!(l.open_streams(), 2);
        drop(a);
        assert!(l.open_stream(None).is_ok());
    }

    #[test]
    fn the_per_ip_limit_counts_per_address_and_ipv6_per_64() {
        let l = limits(|c| c.max_streams_per_ip = Some(2));
        let a1 = l.open_stream(Some(ip("10.0.0.1"))).unwrap();
        let _a2 = l.open_stream(Some(ip("::ffff:10.0.0.1"))).unwrap();
        assert_eq!(
            l.open_stream(Some(ip("10.0.0.1"))).err(),
            Some(Refusal::PerIp { limit: 2 })
        );
        // A refusal by address gives its global place back.
        assert_eq!(l.open_streams(), 2);
        let _b = l.open_stream(Some(ip("10.0.0.2"))).unwrap();
        let _c1 = l.open_stream(Some(ip("2001:db8::1"))).unwrap();
        let _c2 = l.open_stream(Some(ip("2001:db8::ffff:2"))).unwrap();
        assert!(l.open_stream(Some(ip("2001:db8::3"))).is_err());
        assert!(l.open_stream(Some(ip("2001:db8:0:1::3"))).is_ok());
        drop(a1);
        assert!(l.open_stream(Some(ip("10.0.0.1"))).is_ok());
        assert!(lock(&l.per_ip).len() <= 5);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(|c| {
            c.trusted_proxies = vec![
                parse_proxy("10.0.0.0/8").unwrap(),
                parse_proxy("::1").unwrap(),
            ]
        });
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.1.1.1".parse().unwrap(),
        );
        let peer = |s: &str| Some(SocketAddr::new(ip(s), 1000));
        // From a trusted proxy: the right-most untrusted hop, whatever the client prepended.
        assert_eq!(l.client_ip(peer("10.0.0.5"), &h), Some(ip("2.2.2.2")));
        assert_eq!(l.client_ip(peer("::1"), &h), Some(ip("2.2.2.2")));
        // From anyone else the header is ignored.
        assert_eq!(l.client_ip(peer("3.3.3.3"), &h), Some(ip("3.3.3.3")));
        // Garbage stops the walk at the last trusted hop; ports are accepted.
        h.insert("x-forwarded-for", "nonsense, 10.2.2.2".parse().unwrap());
        assert_eq!(l.client_ip(peer("10.0.0.5"), &h), Some(ip("10.2.2.2")));
        h.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(l.client_ip(peer("10.0.0.5"), &h), Some(ip("2001:db8::1")));
        assert_eq!(l.client_ip(None, &h), None);
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.local").is_err());
    }

    #[test]
    fn the_publish_rate_is_a_token_bucket_per_publisher() {
        let l = limits(|c| {
            c.publish_rate = Some(2.0);
            c.publish_burst = 3;
        });
        let t0 = Instant::now();
        let a = Some(ip("10.0.0.1"));
        for _ in 0..3 {
            assert!(l.publish(a, t0).is_ok());
        }
        let refused = l.publish(a, t0).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Rate {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(refused.retry_after_secs(), 1);
        // Another publisher has its own bucket; time refills at the rate.
        assert!(l.publish(Some(ip("10.0.0.2")), t0).is_ok());
        assert!(l.publish(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.publish(a, t0 + Duration::from_millis(500)).is_err());
        // Off by default.
        let open = limits(|_| {});
        assert!((0..1000).all(|_| open.publish(a, t0).is_ok()));
    }

    #[test]
    fn the_publisher_table_is_bounded() {
        let l = limits(|c| {
            c.publish_rate = Some(1.0);
            c.publish_burst = 1;
        });
        let t0 = Instant::now();
        for i in 0..(MAX_PUBLISHERS as u32 + 10) {
            let _ = l.publish(Some(IpAddr::from(i.to_be_bytes())), t0);
        }
        assert_eq!(lock(&l.publishers).buckets.len(), MAX_PUBLISHERS);
        // Later, the full buckets are forgotten to make room.
        let later = t0 + Duration::from_secs(5);
        assert!(l.publish(Some(ip("203.0.113.9")), later).is_ok());
        assert_eq!(lock(&l.publishers).buckets.len(), 1);
    }

    #[test]
    fn the_default_leaves_a_reserve_of_file_descriptors() {
        assert_eq!(default_max_streams(20_000), 18_976);
        assert_eq!(default_max_streams(1024), 922);
        assert_eq!(default_max_streams(256), 192);
        assert_eq!(default_max_streams(1_048_576), 1_047_552);
        assert_eq!(default_max_streams(10), 1);
    }
}
