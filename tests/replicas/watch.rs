//! `Watch`: looks at a running backfill from outside every 20 ms — the lease table through
//! SQL, and one replica's progress in turn through the API — and keeps every look, so a test
//! can ask afterwards what was in flight at any moment, and when each claim was first seen.
//! `max_overlap` reads the same from the provider's own log of requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Api;
use crate::cluster::{Cluster, Lease, TARGET};
use crate::serial_provider::{Outcome, Request};

/// How often the watch looks.
const EVERY: Duration = Duration::from_millis(20);

/// Creates `migration` with `config` through replica 0, planned, starts watching it, and then
/// starts it through replica 0, so the watch sees its first claims: the watch, and when the
/// start was sent.
pub async fn start_watched(cluster: &Cluster, migration: &str, config: Value) -> (Watch, Instant) {
    let body = json!({ "id": migration, "target_model": TARGET, "config": config, "start": false });
    cluster.api(0).start_migration(&body).await;
    let watch = Watch::start(cluster, migration);
    let started = Instant::now();
    let start = cluster.api(0).action(migration, "start").await;
    start.ok::<Value>();
    (watch, started)
}

/// One look.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the look began.
    pub at: Instant,
    /// The unexpired leases: the batches in flight across every replica.
    pub leases: Vec<Lease>,
    /// `in_flight_batches` of one replica's progress (which replica, and its value).
    pub reported: Option<(usize, u64)>,
}

/// A running watch; `stop` returns what it saw.
pub struct Watch {
    /// The replicas whose progress it reads; a replica is forgotten before it is killed.
    /// A tokio `Mutex`, held across one look's requests, so `forget` waits for a request in
    /// flight to the replica to end before the replica dies under it.
    replicas: Arc<Mutex<Vec<Option<Api>>>>,
    /// Every look so far; a std `Mutex`, held only to push or copy.
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Watch {
    /// Starts looking at `migration` on `cluster`.
    pub fn start(cluster: &Cluster, migration: &str) -> Self {
        let apis = (0..cluster.ids.len())
            .map(|i| Some(cluster.api(i).clone()))
            .collect();
        let replicas = Arc::new(Mutex::new(apis));
        let samples = Arc::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(look(
            cluster.db.clone(),
            migration.to_owned(),
            replicas.clone(),
            Arc::clone(&samples),
            stop.clone(),
        ));
        Self {
            replicas,
            samples,
            stop,
            task,
        }
    }

    /// Stops reading replica `i`'s progress, once a request to it in flight has ended.
    pub async fn forget(&self, i: usize) {
        self.replicas.lock().await[i] = None;
    }

    /// Every look so far, oldest first; the watch goes on.
    pub fn so_far(&self) -> Samples {
        assert!(!self.task.is_finished(), "the watch stopped early");
        Samples(self.samples.lock().unwrap().clone())
    }

    /// Stops looking; every look, oldest first.
    pub async fn stop(self) -> Samples {
        self.stop.cancel();
        self.task.await.expect("the watch did not panic");
        Samples(self.samples.lock().unwrap().clone())
    }
}

async fn look(
    db: sqlx::PgPool,
    migration: String,
    replicas: Arc<Mutex<Vec<Option<Api>>>>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for turn in 0usize.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let at = Instant::now();
        let leases: Vec<Lease> = sqlx::query_as::<_, (String, String, bool)>(
            "SELECT token, replica_id, expires_at > now() FROM backfill_leases
             WHERE migration_id = $1",
        )
        .bind(&migration)
        .fetch_all(&db)
        .await
        .expect("the watch reads backfill_leases")
        .into_iter()
        .filter(|(_, _, live)| *live)
        .map(|(token, replica, live)| Lease {
            token,
            replica,
            live,
        })
        .collect();
        let reported = {
            let replicas = replicas.lock().await;
            let i = turn % replicas.len();
            match &replicas[i] {
                Some(api) => Some((i, api.progress(&migration).await.in_flight_batches)),
                None => None,
            }
        };
        let sample = Sample {
            at,
            leases,
            reported,
        };
        samples.lock().unwrap().push(sample);
    }
}

/// Every look of a watch, oldest first.
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The looks that began in `[from, to)`.
    pub fn between(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.at >= from && s.at < to)
    }

    /// The most unexpired leases seen at once in `[from, to)`.
    pub fn max_leases(&self, from: Instant, to: Instant) -> usize {
        let counts = self.between(from, to).map(|s| s.leases.len());
        counts.max().unwrap_or(0)
    }

    /// The largest `in_flight_batches` a replica reported in `[from, to)`.
    pub fn max_reported(&self, from: Instant, to: Instant) -> u64 {
        let reported = self.between(from, to).filter_map(|s| s.reported);
        reported.map(|(_, n)| n).max().unwrap_or(0)
    }

    /// Each claim's token, with when it was first seen and the replica that holds it.
    pub fn claims(&self) -> BTreeMap<String, (Instant, String)> {
        let mut claims = BTreeMap::new();
        for sample in &self.0 {
            for lease in &sample.leases {
                claims
                    .entry(lease.token.clone())
                    .or_insert((sample.at, lease.replica.clone()));
            }
        }
        claims
    }

    /// The claims first seen in `[from, to)`: (token, replica).
    pub fn claims_between(&self, from: Instant, to: Instant) -> Vec<(String, String)> {
        let claims = self.claims().into_iter();
        claims
            .filter(|(_, (at, _))| *at >= from && *at < to)
            .map(|(token, (_, replica))| (token, replica))
            .collect()
    }

    /// How many looks there were, and how many saw more than one batch in flight.
    pub fn counts(&self) -> (usize, usize) {
        let overlapping = self.0.iter().filter(|s| s.leases.len() > 1).count();
        (self.0.len(), overlapping)
    }
}

/// The most of `requests` the provider held at once (queued or in service), counting those
/// that arrived in `[from, to)` and were answered: an exact count, not a sample.
pub fn max_overlap(requests: &[Request], from: Instant, to: Instant) -> usize {
    let mut edges: Vec<(Instant, i32)> = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Embedded && r.arrived >= from && r.arrived < to)
        .flat_map(|r| [(r.arrived, 1), (r.ended, -1)])
        .collect();
    // An end sorts before an arrival at the same instant: the two were not held at once.
    edges.sort();
    let (mut held, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        held += step;
        most = most.max(held);
    }
    usize::try_from(most).unwrap_or(0)
}

/// The requests that arrived at the provider in `[from, to)`.
pub fn arrivals(requests: &[Request], from: Instant, to: Instant) -> Vec<&Request> {
    let arrived = requests.iter();
    arrived
        .filter(|r| r.arrived >= from && r.arrived < to)
        .collect()
}
