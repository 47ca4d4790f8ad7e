//! Serving queries from memory: [`CachingBackend`] wraps any [`MetricsBackend`] so that identical
//! instant queries in flight at once share one backend call (single-flight), and, with
//! `--query-cache-ttl`, answers are kept for a while (a result cache).
//!
//! Many HPAs, kubectl and dashboards ask the same few queries at the same moment; without this each
//! request is one Prometheus query (2,000 identical concurrent requests were 2,000 queries).
//!
//! Two queries are *the same* when their PromQL is identical and their evaluation instants fall in
//! the same [`BUCKET`] (the instant truncated to whole seconds). A waiter that joins a call gets
//! the answer evaluated at the first caller's instant, at most one second before its own. One
//! second because Prometheus' data only changes when a target is scraped (every 15 s to 1 min in
//! practice, never more often than every second) and rate windows are minutes long, so an answer
//! one second older cannot be told apart, while callers never get anything older than that
//! without asking for it with `--query-cache-ttl`.
//!
//! The single-flight map is written by hand over [`Shared`] futures rather than with
//! `moka::future::Cache::try_get_with` (moka is already a dependency, for the result cache below):
//! it must work with the result cache off, a waiter must know whether it joined a call (for the
//! `coalesced` counter), and a caller that goes away (a client that disconnects) must neither
//! cancel the call for the others nor make one of them start it again, which moka does when the
//! task running the initialisation is dropped. The map holds [`WeakShared`] handles, so a call
//! that every waiter abandoned is dropped (and its network request cancelled) instead of living on
//! in the map; every entry leaves the map when its call ends or is dropped.
//!
//! Errors are shared with every waiter of the call that failed, and never cached: the next query
//! asks the backend again.
//!
//! The result cache is keyed by the PromQL; an entry answers a query when it was evaluated no
//! earlier than the TTL before the query's instant (and not in a later bucket). It is bounded by
//! the estimated size of the answers it holds ([`MAX_CACHED_BYTES`]) rather than by their count,
//! since an answer is anything from one sample to `--prometheus-max-response-bytes`; moka evicts
//! the least likely to be asked again (TinyLFU) when it is full, and drops entries after the TTL.
//!
//! Series lookups pass through: the relist lists series one selector at a time, never
//! concurrently, so there is nothing to share.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared, WeakShared},
};
use prometheus_client::metrics::counter::Counter;

use super::{MetricsBackend, Result, Sample, SeriesList};

/// Queries whose evaluation instants fall in the same bucket of this width share a call.
pub const BUCKET: Duration = Duration::from_secs(1);

/// The result cache's bound: the estimated bytes of the answers it holds. Hot metrics are the
/// point (a 100-pod answer is ~20 KiB, so this holds hundreds of them) and the adapter's idle
/// footprint is ~20 MiB, which a cache should not multiply.
pub const MAX_CACHED_BYTES: u64 = 16 << 20;

/// How the cache and the single-flight map are used, for `/metrics`. Each instant query counts
/// once: as a hit (answered from the result cache), a miss (a backend call was made), or coalesced
/// (it shared a call already in flight).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub hits: Counter,
    pub misses: Counter,
    pub coalesced: Counter,
}

/// A backend call's answer, shared by every waiter; the samples are copied once per waiter.
type Answer = Result<Arc<Vec<Sample>>>;
type Call = BoxFuture<'static, Answer>;

/// A [`MetricsBackend`] that coalesces identical concurrent queries and, with a TTL, caches answers.
pub struct CachingBackend {
    state: Arc<State>,
}

struct State {
    backend: Arc<dyn MetricsBackend>,
    in_flight: Mutex<HashMap<Key, InFlight>>,
    /// None when the TTL is zero: single-flight only.
    cache: Option<moka::future::Cache<String, Arc<Cached>>>,
    ttl: Duration,
    counters: Counters,
    /// Tells calls apart, so a call's end removes its own entry and never a newer one's.
    next_id: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    promql: String,
    /// Whole seconds since the epoch of the evaluation instant.
    bucket: u64,
}

struct InFlight {
    id: u64,
    call: WeakShared<Call>,
}

/// A cached answer and the instant it was evaluated at.
struct Cached {
    evaluated: SystemTime,
    samples: Arc<Vec<Sample>>,
}

impl CachingBackend {
    /// Wraps `backend`; `ttl` zero turns the result cache off (queries are still coalesced).
    pub fn new(backend: Arc<dyn MetricsBackend>, ttl: Duration, counters: Counters) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(MAX_CACHED_BYTES)
                .weigher(|promql: &String, cached: &Arc<Cached>| weight(promql, &cached.samples))
                .build()
        });
        Self {
            state: Arc::new(State {
                backend,
                in_flight: Mutex::new(HashMap::new()),
                cache,
                ttl,
                counters,
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// A cached answer to `promql` fresh enough for an evaluation at `time`.
    async fn cached(&self, promql: &str, time: SystemTime) -> Option<Arc<Vec<Sample>>> {
        let cached = self.state.cache.as_ref()?.get(promql).await?;
        let fresh = bucket(cached.evaluated) <= bucket(time) && time < cached.evaluated + self.state.ttl;
        fresh.then(|| cached.samples.clone())
    }

    /// The call in flight for the same query, or a new one.
    fn join(&self, promql: &str, time: SystemTime) -> Shared<Call> {
        let key = Key {
            promql: promql.to_owned(),
            bucket: bucket(time),
        };
        let mut in_flight = self.state.in_flight();
        if let Some(call) = in_flight.get(&key).and_then(|entry| entry.call.upgrade()) {
            self.state.counters.coalesced.inc();
            return call;
        }
        self.state.counters.misses.inc();
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let call = self.state.clone().call(key.clone(), id, time).shared();
        // A call is only downgraded before its first poll, so this always succeeds; without a
        // handle the call still runs, it just cannot be joined.
        if let Some(weak) = call.downgrade() {
            in_flight.insert(key, InFlight { id, call: weak });
        }
        call
    }
}

impl State {
    /// A poisoned lock only means a thread panicked while holding it; the map is still usable.
    fn in_flight(&self) -> MutexGuard<'_, HashMap<Key, InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The backend call for `key`; its answer goes to the result cache before the call leaves
    /// the in-flight map, so a query arriving in between finds one or the other.
    fn call(self: Arc<Self>, key: Key, id: u64, time: SystemTime) -> Call {
        async move {
            let leave = Leave {
                state: self.clone(),
                key,
                id,
            };
            let answer = self.backend.query(&leave.key.promql, time).await.map(Arc::new);
            if let (Ok(samples), Some(cache)) = (&answer, &self.cache) {
                let cached = Cached {
                    evaluated: time,
                    samples: samples.clone(),
                };
                cache.insert(leave.key.promql.clone(), Arc::new(cached)).await;
            }
            drop(leave);
            answer
        }
        .boxed()
    }
}

/// Removes a call's entry from the in-flight map when the call ends, or is dropped because every
/// waiter went away.
struct Leave {
    state: Arc<State>,
    key: Key,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut in_flight = self.state.in_flight();
        if in_flight.get(&self.key).is_some_and(|entry| entry.id == self.id) {
            in_flight.remove(&self.key);
        }
    }
}

impl MetricsBackend for CachingBackend {
    fn query<'a>(&'a self, promql: &'a str, time: SystemTime) -> BoxFuture<'a, Result<Vec<Sample>>> {
        Box::pin(async move {
            if let Some(samples) = self.cached(promql, time).await {
                self.state.counters.hits.inc();
                return Ok(samples.as_ref().clone());
            }
            let answer = self.join(promql, time).await;
            answer.map(|samples| samples.as_ref().clone())
        })
    }

    fn series<'a>(
        &'a self,
        selector: &'a str,
        start: SystemTime,
        end: SystemTime,
    ) -> BoxFuture<'a, Result<SeriesList>> {
        self.state.backend.series(selector, start, end)
    }

    fn describe(&self) -> &str {
        self.state.backend.describe()
    }
}

/// Whole seconds since the epoch ([`BUCKET`] wide); instants before the epoch share bucket 0.
fn bucket(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() / BUCKET.as_secs())
        .unwrap_or(0)
}

/// An answer's estimated size in memory: the PromQL, and per sample its labels and fixed part.
fn weight(promql: &str, samples: &[Sample]) -> u32 {
    let labels = |sample: &Sample| -> usize {
        sample
            .labels
            .iter()
            .map(|(name, value)| name.len() + value.len() + 16)
            .sum()
    };
    let bytes = promql.len() + samples.iter().map(|s| 48 + labels(s)).sum::<usize>();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::backend::{ErrorKind, MemoryBackend, memory::Behaviour};

    /// A [`MemoryBackend`] whose answers wait until the test opens the gate; each call is recorded
    /// when it is made, so a test sees how many reached the backend while they are held.
    struct Gated {
        memory: MemoryBackend,
        open: watch::Sender<bool>,
    }

    impl Gated {
        fn new() -> Arc<Self> {
            let memory = MemoryBackend::new();
            memory.answer("up", vec![sample("a", 1.0)]);
            memory.answer("down", vec![sample("b", 2.0)]);
            Arc::new(Self {
                memory,
                open: watch::channel(false).0,
            })
        }

        fn open(&self) {
            self.open.send_replace(true);
        }

        fn calls(&self) -> usize {
            self.memory.queries().len()
        }
    }

    impl MetricsBackend for Gated {
        fn query<'a>(&'a self, promql: &'a str, time: SystemTime) -> BoxFuture<'a, Result<Vec<Sample>>> {
            let answer = self.memory.query(promql, time);
            let mut open = self.open.subscribe();
            Box::pin(async move {
                let _ = open.wait_for(|open| *open).await;
                answer.await
            })
        }

        fn series<'a>(
            &'a self,
            selector: &'a str,
            start: SystemTime,
            end: SystemTime,
        ) -> BoxFuture<'a, Result<SeriesList>> {
            self.memory.series(selector, start, end)
        }

        fn describe(&self) -> &str {
            "gated"
        }
    }

    fn sample(pod: &str, value: f64) -> Sample {
        Sample {
            labels: [("pod", pod)].into_iter().collect(),
            timestamp: 1000.0,
            value,
        }
    }

    /// The instant `seconds` after the epoch (1000.2 and 1000.9 share a bucket, 1001.1 does not).
    fn instant(seconds: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(seconds)
    }

    fn caching(backend: &Arc<Gated>, ttl: Duration) -> Arc<CachingBackend> {
        let backend: Arc<dyn MetricsBackend> = backend.clone();
        Arc::new(CachingBackend::new(backend, ttl, Counters::default()))
    }

    fn counts(caching: &CachingBackend) -> (u64, u64, u64) {
        let counters = &caching.state.counters;
        (
            counters.hits.get(),
            counters.misses.get(),
            counters.coalesced.get(),
        )
    }

    /// Starts `n` queries of `promql` at `time`, each in its own task.
    fn spawn_queries(
        caching: &Arc<CachingBackend>,
        n: usize,
        promql: &'static str,
        time: SystemTime,
    ) -> Vec<tokio::task::JoinHandle<Result<Vec<Sample>>>> {
        (0..n)
            .map(|_| {
                let caching = caching.clone();
                tokio::spawn(async move { caching.query(promql, time).await })
            })
            .collect()
    }

    /// Waits (up to a generous bound) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the condition did not hold within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_queries_share_one_backend_call() {
        let backend = Gated::new();
        let caching = caching(&backend, Duration::ZERO);
        let queries = spawn_queries(&caching, 100, "up", instant(1000.2));
        until(|| counts(&caching).2 == 99).await;
        backend.open();
        for query in queries {
            assert_eq!(query.await.unwrap().unwrap(), vec![sample("a", 1.0)]);
        }
        assert_eq!(backend.calls(), 1, "one backend call for 100 identical queries");
        assert_eq!(counts(&caching), (0, 1, 99));
        assert!(caching.state.in_flight().is_empty(), "the call left the map");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_reaches_every_waiter_and_is_not_cached() {
        let backend = Gated::new();
        backend.memory.set_behaviour(Behaviour::Fail(ErrorKind::Timeout));
        let caching = caching(&backend, Duration::from_secs(60));
        let queries = spawn_queries(&caching, 10, "up", instant(1000.2));
        until(|| counts(&caching).2 == 9).await;
        backend.open();
        for query in queries {
            let err = query.await.unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Timeout);
        }
        assert_eq!(backend.calls(), 1);
        backend.memory.set_behaviour(Behaviour::Answer);
        let answer = caching.query("up", instant(1000.3)).await.unwrap();
        assert_eq!(answer, vec![sample("a", 1.0)], "the next query asks again");
        assert_eq!(backend.calls(), 2);
        assert_eq!(counts(&caching), (0, 2, 9));
    }

    #[tokio::test]
    async fn within_the_ttl_a_query_is_a_hit_and_after_it_a_miss() {
        let backend = Gated::new();
        backend.open();
        let caching = caching(&backend, Duration::from_secs(10));
        let query = |time: f64| caching.query("up", instant(time));
        query(1000.2).await.unwrap();
        assert_eq!(query(1005.0).await.unwrap(), vec![sample("a", 1.0)]);
        assert_eq!((backend.calls(), counts(&caching)), (1, (1, 1, 0)), "a hit");
        query(1010.5).await.unwrap();
        assert_eq!(
            (backend.calls(), counts(&caching)),
            (2, (1, 2, 0)),
            "evaluated more than the TTL before: a miss"
        );
        query(1009.0).await.unwrap();
        assert_eq!(
            (backend.calls(), counts(&caching)),
            (3, (1, 3, 0)),
            "an earlier instant than the cached answer's: a miss"
        );
    }

    /// The instants alone could keep an answer for ever if callers asked about the same instant;
    /// the entry itself expires.
    #[tokio::test]
    async fn cached_answers_expire_after_the_ttl() {
        let backend = Gated::new();
        backend.open();
        let caching = caching(&backend, Duration::from_millis(300));
        caching.query("up", instant(1000.2)).await.unwrap();
        caching.query("up", instant(1000.2)).await.unwrap();
        assert_eq!(backend.calls(), 1, "a hit within the TTL");
        tokio::time::sleep(Duration::from_secs(1)).await;
        caching.query("up", instant(1000.2)).await.unwrap();
        assert_eq!(backend.calls(), 2, "a miss after the TTL");
    }

    #[tokio::test]
    async fn without_a_ttl_nothing_is_cached() {
        let backend = Gated::new();
        backend.open();
        let caching = caching(&backend, Duration::ZERO);
        for _ in 0..3 {
            caching.query("up", instant(1000.2)).await.unwrap();
        }
        assert_eq!(backend.calls(), 3);
        assert_eq!(counts(&caching), (0, 3, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_promql_or_another_bucket_is_another_call() {
        let backend = Gated::new();
        let caching = caching(&backend, Duration::ZERO);
        let mut queries = spawn_queries(&caching, 3, "up", instant(1000.2));
        until(|| backend.calls() == 1 && counts(&caching).2 == 2).await;
        queries.extend(spawn_queries(&caching, 1, "down", instant(1000.2)));
        queries.extend(spawn_queries(&caching, 1, "up", instant(1001.1)));
        queries.extend(spawn_queries(&caching, 1, "up", instant(1000.9)));
        until(|| backend.calls() == 3 && counts(&caching).2 == 3).await;
        backend.open();
        for query in queries {
            query.await.unwrap().unwrap();
        }
        // The spawned queries start in any order on two threads; the calls are what counts.
        let mut calls = backend.memory.queries();
        calls.sort();
        assert_eq!(
            calls,
            ["down", "up", "up"],
            "the 1000.9 s query joined the 1000.2 s call"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_that_goes_away_leaves_the_call_to_the_others() {
        let backend = Gated::new();
        let caching = caching(&backend, Duration::ZERO);
        let first = spawn_queries(&caching, 1, "up", instant(1000.2));
        until(|| backend.calls() == 1).await;
        let second = spawn_queries(&caching, 1, "up", instant(1000.2));
        until(|| counts(&caching).2 == 1).await;
        first[0].abort();
        backend.open();
        for query in second {
            assert_eq!(query.await.unwrap().unwrap(), vec![sample("a", 1.0)]);
        }
        assert_eq!(backend.calls(), 1, "the call went on for the second waiter");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_every_waiter_abandoned_is_not_joined() {
        let backend = Gated::new();
        let caching = caching(&backend, Duration::ZERO);
        let abandoned = spawn_queries(&caching, 2, "up", instant(1000.2));
        until(|| counts(&caching).2 == 1).await;
        for query in &abandoned {
            query.abort();
        }
        for query in abandoned {
            assert!(query.await.unwrap_err().is_cancelled());
        }
        until(|| caching.state.in_flight().is_empty()).await;
        backend.open();
        caching.query("up", instant(1000.2)).await.unwrap();
        assert_eq!(backend.calls(), 2, "a new call");
        assert_eq!(counts(&caching), (0, 2, 1));
    }

    #[test]
    fn buckets_are_whole_seconds() {
        assert_eq!(bucket(instant(1000.0)), bucket(instant(1000.999)));
        assert_ne!(bucket(instant(1000.999)), bucket(instant(1001.0)));
        assert_eq!(bucket(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
