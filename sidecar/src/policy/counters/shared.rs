//! Counters shared by every replica of a workload, in Redis (one server, or a Redis Cluster).
//!
//! Each decided call is one script (`counters.lua`, by `EVALSHA`): it checks what the
//! decision read and reserves what it allows, atomically, by the Redis server's clock. A
//! call's keys share one hash tag (the store's prefix, `tollgate:{<workload>}:`), so they are
//! in one Cluster slot, and each key expires when its window ends.
//!
//! Lost counts: a store that loses keys mid-window (FLUSHALL, a failover that dropped writes)
//! would let the window's limits run again from zero. Every reservation bumps the workload's
//! sequence (a key that never expires) and each proxy sends the highest it has seen: a lower
//! one in the store means it lost writes, and every window that began by then is refused
//! until it ends ([`Reply::Lost`]). Undetected only if every proxy restarts with the store.
//!
//! Availability: a call that gets no answer within the timeout (or an error) marks the store
//! unavailable; until a background probe reconnects (backoff from 50 ms to 2 s), calls do not
//! wait for it, and each policy's `countersUnavailable` decides them. A timed-out script may
//! still have run: the call is then counted in Redis although it was denied (or counted
//! locally), which errs towards refusing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Script};
use tollgate_api::{CounterKey, CountersUnavailable, Denial, DenyAs, Reservation, Window};

use super::{Taken, now_secs, window_start};
use crate::telemetry::metrics::Metrics;

/// Where the counters are, and how long each call may wait for them.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// `redis://` or `rediss://` URLs: one server, or a Redis Cluster's seed nodes.
    pub nodes: Vec<String>,
    pub cluster: bool,
    /// Overrides a password in the URLs.
    pub password: Option<String>,
    /// The CA (PEM) a `rediss://` server's certificate is checked against, instead of the
    /// system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// How long a call waits for Redis before its policies' `countersUnavailable` applies.
    pub timeout: Duration,
    /// Whose counters these are: every replica of a workload gives the same group, and
    /// shares its counters.
    pub group: String,
}

impl SharedConfig {
    /// Checks what cannot be checked by connecting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.nodes.is_empty(), "--counters names no Redis");
        anyhow::ensure!(
            self.cluster || self.nodes.len() == 1,
            "--counters names {} servers; give one, or the seed nodes of a Redis Cluster with --counters-cluster",
            self.nodes.len()
        );
        for n in &self.nodes {
            anyhow::ensure!(
                n.starts_with("redis://") || n.starts_with("rediss://"),
                "--counters {}: write a redis:// or rediss:// URL",
                redacted(n)
            );
            n.as_str()
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("--counters {}: {e}", redacted(n)))?;
        }
        anyhow::ensure!(
            !self.group.is_empty() && !self.group.contains(['{', '}']),
            "--counters-group {:?}: give a non-empty name without braces",
            self.group
        );
        anyhow::ensure!(
            !self.timeout.is_zero(),
            "--counters-timeout must be more than zero"
        );
        Ok(())
    }
}

/// A connection to one server or to a cluster; both multiplex calls on few sockets.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How a decision used one value it read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    /// A `state.` condition read it: it must still be this.
    Value(u64),
    /// A limit was full: it must still be.
    Full { amount: u64, max: u64 },
    /// A limit had room: it must still have.
    Fits { amount: u64, max: u64 },
}

/// One value a decision read.
#[derive(Clone, Debug)]
pub struct Read {
    pub key: CounterKey,
    pub window: Window,
    pub check: Check,
    pub unavailable: CountersUnavailable,
    pub policy: Arc<str>,
}

/// What Redis said of one call.
pub enum Reply {
    /// What it read holds, and everything it allows is reserved.
    Reserved(Vec<Taken>),
    /// The reservation at this index was full; nothing was reserved.
    Full(usize),
    /// What it read no longer holds: the values now, one per read, to decide again on.
    Stale(Vec<u64>),
    /// The store lost counts of a window this call needs: it is refused until that window ends.
    Lost(Denial),
}

thread_local! {
    /// This worker thread's connection: the store's address, its generation, the connection.
    static THREAD_CONN: RefCell<Option<(usize, u64, Conn)>> = const { RefCell::new(None) };
}

struct Down {
    since: Instant,
    why: String,
}

/// Counts are exact up to 2^53: Lua's numbers are doubles.
const EXACT: u64 = 1 << 53;
/// How long a (re)connect may take, on top of the call timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);

pub struct Shared {
    cfg: SharedConfig,
    /// The key prefix: `tollgate:{<group>}:`, the braces being the hash tag.
    prefix: String,
    /// The nodes without passwords, for messages.
    target: String,
    /// Bumped each time the store is found unavailable: every worker thread's connection of
    /// an older generation is dropped and made again.
    generation: AtomicU64,
    down: Mutex<Option<Down>>,
    probing: AtomicBool,
    reserve: Script,
    give_back: Script,
    /// The values Redis sent last, with the window they are of, so a decision reads what the
    /// script will find (and is checked against).
    cache: Mutex<HashMap<CounterKey, (u64, u64), RandomState>>,
    /// The highest sequence of the workload's counters this proxy has seen in the store.
    seen: AtomicU64,
    metrics: Metrics,
}

impl Shared {
    /// Connects (waiting at most a couple of seconds); if Redis is not there yet, the store
    /// starts unavailable and keeps trying in the background.
    pub async fn start(cfg: SharedConfig, metrics: Metrics) -> anyhow::Result<Arc<Shared>> {
        cfg.validate()?;
        let target = format!(
            "redis{} {}",
            if cfg.cluster { " cluster" } else { "" },
            cfg.nodes
                .iter()
                .map(|n| redacted(n))
                .collect::<Vec<_>>()
                .join(",")
        );
        let shared = Arc::new(Shared {
            prefix: format!("tollgate:{{{}}}:", cfg.group),
            cfg,
            target,
            generation: AtomicU64::new(0),
            down: Mutex::new(None),
            probing: AtomicBool::new(false),
            reserve: Script::new(include_str!("counters.lua")),
            give_back: Script::new(include_str!("rollback.lua")),
            cache: Mutex::default(),
            seen: AtomicU64::new(0),
            metrics,
        });
        match shared.connect().await {
            Ok(conn) => {
                shared.keep_here(conn);
                shared.metrics.counter_store_up(true);
                tracing::info!(counters = %shared.target, group = %shared.cfg.group, "counters shared in Redis");
            }
            Err(why) => shared.fail("connect", why),
        }
        Ok(shared)
    }

    /// The Redis key of a counter.
    fn key(&self, key: &CounterKey) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.as_str().len());
        k.push_str(&self.prefix);
        k.push_str(key.as_str());
        k
    }

    /// The value Redis last sent for `key`, if it is of the current window.
    pub fn cached(&self, key: &CounterKey, window: Window) -> Option<u64> {
        let start = window_start(window, now_secs());
        self.cache
            .lock()
            .get(key)
            .filter(|(s, _)| *s == start)
            .map(|(_, v)| *v)
    }

    /// What a call gets while the store cannot answer, from the policies whose counters it
    /// needs: the denial of the first choosing `deny`, or `None` to count it in the pod (all
    /// choose `local`).
    pub fn without_store<'p>(
        &self,
        mut policies: impl Iterator<Item = (CountersUnavailable, &'p str)>,
        why: &str,
    ) -> Option<Denial> {
        let Some((_, policy)) = policies.find(|(u, _)| *u == CountersUnavailable::Deny) else {
            self.metrics.counter_store_fallback("local");
            return None;
        };
        self.metrics.counter_store_fallback("deny");
        Some(Denial {
            reason: format!(
                "The shared rate-limit counters ({}) are unavailable: {why}. Policy {policy} denies the calls that need them until they are back",
                self.target
            ),
            policy: policy.to_string(),
            rule: "(counters unavailable)".into(),
            deny_as: DenyAs::Error,
        })
    }

    /// Checks `reads` and reserves `reservations` in one script. `Err` says why Redis could
    /// not answer (then nothing is known to be reserved).
    pub async fn run(
        self: &Arc<Self>,
        reads: &[Read],
        reservations: &[Reservation],
    ) -> Result<Reply, String> {
        let mut conn = self.connection().await?;
        let mut keys: Vec<&CounterKey> = Vec::with_capacity(reads.len() + reservations.len());
        // Each key once; the script names them by place, from 1.
        fn index<'k>(k: &'k CounterKey, keys: &mut Vec<&'k CounterKey>) -> usize {
            match keys.iter().position(|x| *x == k) {
                Some(i) => i + 1,
                None => {
                    keys.push(k);
                    keys.len()
                }
            }
        }
        let mut call = self.reserve.prepare_invoke();
        call.arg(reads.len());
        for r in reads {
            let (check, a, b) = match r.check {
                Check::Value(v) => (0, v, 0),
                Check::Full { amount, max } => (1, amount, max),
                Check::Fits { amount, max } => (2, amount, max),
            };
            let at = index(&r.key, &mut keys);
            call.arg(at)
                .arg(r.window.seconds())
                .arg(check)
                .arg(a.min(EXACT))
                .arg(b.min(EXACT));
        }
        for r in reservations {
            let at = index(&r.key, &mut keys);
            call.arg(at)
                .arg(r.window.seconds())
                .arg(r.amount.min(EXACT))
                .arg(r.max.map_or(-1, |m| m.min(EXACT) as i64));
        }
        for k in &keys {
            call.key(self.key(k));
        }
        // The sequence and the loss marker: no counter key is without a `|`.
        call.key(format!("{}seq", self.prefix))
            .key(format!("{}lost", self.prefix))
            .arg(self.seen.load(Ordering::Relaxed));
        let reply: Vec<i64> = self.ask(&call, &mut conn).await?;
        self.read_reply(&reply, reads, reservations).ok_or_else(|| {
            let why = format!("an answer this proxy cannot read: {reply:?}");
            self.fail("answer", why.clone());
            why
        })
    }

    fn read_reply(
        &self,
        reply: &[i64],
        reads: &[Read],
        reservations: &[Reservation],
    ) -> Option<Reply> {
        let (&status, rest) = reply.split_first()?;
        let (&now, rest) = rest.split_first()?;
        let now = u64::try_from(now).ok()?;
        let (&seq, rest) = rest.split_first()?;
        self.seen
            .fetch_max(u64::try_from(seq).ok()?, Ordering::Relaxed);
        let value = |v: &i64| u64::try_from(*v).ok();
        let mut cache = self.cache.lock();
        let mut remember = |key: &CounterKey, window: Window, v: u64| {
            cache.insert(key.clone(), (window_start(window, now), v));
        };
        match status {
            0 if rest.len() == reads.len() + reservations.len() => {
                for (r, v) in reads.iter().zip(rest) {
                    remember(&r.key, r.window, value(v)?);
                }
                let mut taken = Vec::with_capacity(reservations.len());
                for (r, v) in reservations.iter().zip(&rest[reads.len()..]) {
                    remember(&r.key, r.window, value(v)?);
                    taken.push(Taken {
                        key: r.key.clone(),
                        window: r.window,
                        start: window_start(r.window, now),
                        amount: r.amount.min(EXACT),
                    });
                }
                Some(Reply::Reserved(taken))
            }
            // Stale only says something of what was read.
            1 if !reads.is_empty() && rest.len() == reads.len() => {
                self.metrics.counter_store_stale();
                let mut values = Vec::with_capacity(reads.len());
                for (r, v) in reads.iter().zip(rest) {
                    let v = value(v)?;
                    remember(&r.key, r.window, v);
                    values.push(v);
                }
                Some(Reply::Stale(values))
            }
            2 if rest.len() == reads.len() + 1 => {
                let at = usize::try_from(rest[0]).ok()?;
                for (r, v) in reads.iter().zip(&rest[1..]) {
                    remember(&r.key, r.window, value(v)?);
                }
                (at < reservations.len()).then_some(Reply::Full(at))
            }
            3 if rest.len() == 2 => {
                let at = usize::try_from(rest[1]).ok()?;
                let (window, policy) = match rest[0] {
                    0 => reads.get(at).map(|r| (r.window, r.policy.to_string()))?,
                    1 => reservations
                        .get(at)
                        .map(|r| (r.window, r.on_full.policy.clone()))?,
                    _ => return None,
                };
                self.metrics.counter_store_error("lost_window");
                let ends = window_start(window, now) + window.seconds();
                Some(Reply::Lost(Denial {
                    reason: format!(
                        "The shared rate-limit counters ({}) lost counts of this {} (their sequence went back: a FLUSHALL, \
                         or a failover that dropped writes), so what was counted cannot be known; policy {policy}'s \
                         calls that count in it are refused until it ends, in {} s",
                        self.target,
                        window.name(),
                        ends.saturating_sub(now)
                    ),
                    policy,
                    rule: "(counters lost)".into(),
                    deny_as: DenyAs::Error,
                }))
            }
            _ => None,
        }
    }

    /// Gives back what a call that did not run took, in the background; if Redis cannot be
    /// told, the call stays counted (towards refusing, never towards allowing).
    pub fn rollback(self: &Arc<Self>, taken: Vec<Taken>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a rollback of shared counters was lost: no runtime");
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let lost = |why: &str| {
                tracing::warn!(counters = %this.target, why, "a rollback was lost: the call stays counted");
                this.metrics.counter_store_rollback_lost();
            };
            let mut conn = match this.connection().await {
                Ok(c) => c,
                Err(why) => return lost(&why),
            };
            let mut call = this.give_back.prepare_invoke();
            for t in &taken {
                call.key(this.key(&t.key))
                    .arg(t.window.seconds())
                    .arg(t.start)
                    .arg(t.amount);
            }
            if let Err(why) = this.ask::<i64>(&call, &mut conn).await {
                lost(&why);
            }
        });
    }

    /// This worker thread's connection (made now if it has none of this generation), or why
    /// there is none. Each worker thread has its own, driven by its own event loop, so a call
    /// never waits for another thread to write or read its script.
    async fn connection(self: &Arc<Self>) -> Result<Conn, String> {
        if let Some(down) = &*self.down.lock() {
            return Err(down.why.clone());
        }
        let id = Arc::as_ptr(self) as usize;
        let generation = self.generation.load(Ordering::Acquire);
        let kept = THREAD_CONN.with_borrow(|c| match c {
            Some((i, g, conn)) if *i == id && *g == generation => Some(conn.clone()),
            _ => None,
        });
        if let Some(conn) = kept {
            return Ok(conn);
        }
        match self.open().await {
            Ok(conn) => {
                THREAD_CONN.set(Some((id, generation, conn.clone())));
                Ok(conn)
            }
            Err(why) => {
                self.fail("connect", why.clone());
                Err(why)
            }
        }
    }

    /// Keeps `conn` as this thread's connection.
    fn keep_here(self: &Arc<Self>, conn: Conn) {
        let generation = self.generation.load(Ordering::Acquire);
        THREAD_CONN.set(Some((Arc::as_ptr(self) as usize, generation, conn)));
    }

    /// Runs a script within the timeout; `Err` (the store is then marked unavailable) says
    /// why it did not answer.
    async fn ask<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        call: &redis::ScriptInvocation<'_>,
        conn: &mut Conn,
    ) -> Result<T, String> {
        let traced = crate::telemetry::trace::current().map(|t| (t, std::time::Instant::now()));
        let answer = tokio::time::timeout(self.cfg.timeout, call.invoke_async::<T>(conn)).await;
        if let Some((t, began)) = traced {
            use crate::telemetry::trace::{Attr, SpanKind};
            let error = match &answer {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {:?}", self.cfg.timeout)),
            };
            let attrs = vec![
                ("db.system.name", Attr::from("redis")),
                ("db.operation.name", Attr::from("EVALSHA")),
            ];
            t.child("EVALSHA", SpanKind::Client, began, attrs, error);
        }
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) if !e.is_timeout() => Err(self.failed(e)),
            // The client's own response timeout is the same one.
            Ok(Err(_)) | Err(_) => {
                let why = format!("no answer within {:?}", self.cfg.timeout);
                self.fail("timeout", why.clone());
                Err(why)
            }
        }
    }

    fn failed(self: &Arc<Self>, e: redis::RedisError) -> String {
        let reason = if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            "connection"
        } else {
            "server"
        };
        let why = e.to_string();
        self.fail(reason, why.clone());
        why
    }

    /// Marks the store unavailable (once per outage) and starts the probe that brings it back.
    fn fail(self: &Arc<Self>, reason: &'static str, why: String) {
        self.metrics.counter_store_error(reason);
        {
            let mut down = self.down.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
            if down.is_none() {
                tracing::warn!(counters = %self.target, why = %why, "shared counters unavailable; each policy's countersUnavailable decides the calls that need them");
                self.metrics.counter_store_up(false);
                *down = Some(Down {
                    since: Instant::now(),
                    why,
                });
            }
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.probe().await });
        }
    }

    /// Reconnects with backoff until Redis answers, then marks the store available.
    async fn probe(self: Arc<Self>) {
        let mut wait = FIRST_RETRY;
        loop {
            tokio::time::sleep(wait).await;
            match self.connect().await {
                Ok(conn) => {
                    self.keep_here(conn);
                    let was = self.down.lock().take();
                    self.probing.store(false, Ordering::Release);
                    self.metrics.counter_store_up(true);
                    if let Some(was) = was {
                        tracing::info!(counters = %self.target, after = ?was.since.elapsed(), "shared counters available again");
                    }
                    return;
                }
                Err(why) => {
                    if let Some(down) = &mut *self.down.lock() {
                        down.why = why;
                    }
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// A new connection that has answered a PING, with the scripts loaded.
    async fn connect(&self) -> Result<Conn, String> {
        let limit = CONNECT_TIMEOUT + self.cfg.timeout;
        let checked = async {
            let mut conn = self.open_within(limit).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            self.reserve.prepare_invoke().load_async(&mut conn).await?;
            self.give_back
                .prepare_invoke()
                .load_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(limit, checked).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {limit:?}")),
        }
    }

    /// A new connection for a worker thread (the store is known to answer: no checks).
    async fn open(&self) -> Result<Conn, String> {
        let limit = CONNECT_TIMEOUT + self.cfg.timeout;
        match tokio::time::timeout(limit, self.open_within(limit)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {limit:?}")),
        }
    }

    async fn open_within(&self, limit: Duration) -> Result<Conn, redis::RedisError> {
        let connecting = async {
            let conn = if self.cfg.cluster {
                let mut b = redis::cluster::ClusterClientBuilder::new(self.cfg.nodes.clone())
                    .connection_timeout(limit)
                    .response_timeout(self.cfg.timeout)
                    .retries(1);
                if let Some(pw) = &self.cfg.password {
                    b = b.password(pw);
                }
                if let Some(ca) = &self.cfg.ca_pem {
                    b = b.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
                Conn::Cluster(b.build()?.get_async_connection().await?)
            } else {
                let mut info = self.cfg.nodes[0].as_str().into_connection_info()?;
                if let Some(pw) = &self.cfg.password {
                    let settings = info.redis_settings().clone().set_password(pw);
                    info = info.set_redis_settings(settings);
                }
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(Some(self.cfg.timeout));
                let client = match &self.cfg.ca_pem {
                    None => redis::Client::open(info)?,
                    Some(ca) => redis::Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.clone()),
                        },
                    )?,
                };
                Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            };
            Ok::<_, redis::RedisError>(conn)
        };
        connecting.await
    }

    /// Forgets values of windows that have ended.
    pub fn sweep(&self) {
        let now = now_secs();
        self.cache
            .lock()
            .retain(|_, (start, _)| now.saturating_sub(*start) < Window::Day.seconds());
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        match &*self.down.lock() {
            None => format!("counters: {}: available", self.target),
            Some(d) => format!(
                "counters: {}: unavailable for {}s ({}); calls that need them are denied, or counted in this pod where their policy says countersUnavailable: local",
                self.target,
                d.since.elapsed().as_secs(),
                d.why
            ),
        }
    }
}

/// A Redis URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("rediss://user:secret@redis:6380/0"),
            "rediss://redis:6380/0"
        );
        assert_eq!(redacted("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn a_group_with_braces_is_refused_as_it_would_move_the_hash_tag() {
        let cfg = SharedConfig {
            nodes: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            password: None,
            ca_pem: None,
            timeout: Duration::from_millis(100),
            group: "a}b".into(),
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("without braces"), "{err}");
    }

    #[test]
    fn several_servers_without_cluster_mode_are_refused() {
        let cfg = SharedConfig {
            nodes: vec!["redis://a:1".into(), "redis://b:2".into()],
            cluster: false,
            password: None,
            ca_pem: None,
            timeout: Duration::from_millis(100),
            group: "g".into(),
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("--counters-cluster")
        );
    }
}
