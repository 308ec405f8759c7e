//! Three replicas share one migration: every replica takes batches, the batches in flight
//! across them never exceed `max_concurrent`, and when one is SIGKILLed mid-run the other two
//! redo its batches once its leases expire and finish, with every document counted once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{Cluster, DOCUMENTS, LEASE, TARGET, TEXT_CHARS, corpus, one_at_a_time};
use crate::helpers::{PATIENCE, eventually};
use crate::watch::{Samples, max_overlap, start_watched};

const MIGRATION: &str = "shared";
const BATCH_SIZE: usize = 50;
const MAX_CONCURRENT: usize = 4;
/// The replica that is killed.
const VICTIM: usize = 2;
/// The share of the documents processed before the kill.
const KILL_AT: f64 = 0.4;

/// What the test saw when it killed the victim.
#[derive(Debug)]
struct Kill {
    at: Instant,
    /// The victim's claims then, and the documents still queued under them.
    claims: Vec<String>,
    orphaned: Vec<String>,
    /// The migration row's counts then, and the documents per second so far.
    total: i64,
    processed: i64,
    rate: f64,
    /// The victim's `processed` in `backfill_replicas` then.
    victim_processed: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_migration_within_max_concurrent_and_survive_a_kill() {
    let _alone = one_at_a_time().await;
    let mut cluster = Cluster::start().await;
    let loading = Instant::now();
    cluster.load(&corpus()).await;
    eprintln!("loaded {DOCUMENTS} documents in {:?}", loading.elapsed());
    let config = json!({ "batch_size": BATCH_SIZE, "max_concurrent": MAX_CONCURRENT });
    let (watch, started) = start_watched(&cluster, MIGRATION, config).await;

    every_replica_takes_batches(&cluster).await;
    watch.forget(VICTIM).await;
    let kill = kill_mid_batch(&mut cluster, started).await;
    cluster
        .api(0)
        .wait_for_state(MIGRATION, "completed", PATIENCE)
        .await;
    let finished = Instant::now();
    survivors_finish_in_time(&kill, finished - kill.at);
    eprintln!("completed in {:?}", started.elapsed());

    let samples = watch.stop().await;
    counted_once(&cluster, &kill).await;
    in_flight_within_bound(&cluster, &samples, started, finished);
}

/// Waits until each replica has processed documents, and the migration `KILL_AT` of them.
async fn every_replica_takes_batches(cluster: &Cluster) {
    let kill_at = (DOCUMENTS as f64 * KILL_AT) as u64;
    eventually(PATIENCE, "every replica to process batches", || async {
        let progress = cluster.api(1).progress(MIGRATION).await;
        let working = progress.replicas.iter().filter(|r| r.processed > 0).count();
        if working == cluster.ids.len() && progress.processed >= kill_at {
            Ok(())
        } else {
            Err(format!("{:?}", progress.replicas))
        }
    })
    .await;
}

/// SIGKILLs the victim while it holds a lease, so that another replica must redo its batch.
async fn kill_mid_batch(cluster: &mut Cluster, started: Instant) -> Kill {
    let victim = cluster.ids[VICTIM].clone();
    let claims: Vec<String> = eventually(PATIENCE, "the victim to hold a lease", || async {
        let leases = cluster.live_leases(MIGRATION).await;
        let held = leases.into_iter().filter(|lease| lease.replica == victim);
        let claims: Vec<String> = held.map(|lease| lease.token).collect();
        if claims.is_empty() {
            Err("no lease".to_owned())
        } else {
            Ok(claims)
        }
    })
    .await;
    cluster.kill(VICTIM);
    let at = Instant::now();
    let orphaned = cluster.queued_under(&claims).await;
    let counts = cluster.counts(MIGRATION).await;
    let shares = cluster.processed_by_replica(MIGRATION).await;
    let kill = Kill {
        at,
        claims,
        orphaned,
        total: counts.total,
        processed: counts.processed,
        rate: counts.processed as f64 / started.elapsed().as_secs_f64(),
        victim_processed: processed_of(&shares, &victim),
    };
    assert!(
        !kill.orphaned.is_empty(),
        "the victim was killed holding a lease, with documents queued under it: {kill:?}"
    );
    kill
}

/// The two survivors finish within the lease plus the remaining work at the rate so far,
/// doubled, plus a few seconds for the routing snapshots to report completion.
fn survivors_finish_in_time(kill: &Kill, after_kill: Duration) {
    let remaining = (kill.total - kill.processed) as f64;
    let expected = LEASE + Duration::from_secs_f64(remaining / kill.rate);
    let bound = expected * 2 + Duration::from_secs(5);
    let capacity = crate::cluster::speed().docs_per_second(TEXT_CHARS, BATCH_SIZE);
    eprintln!(
        "killed at {} of {} processed, holding {} claims of {} documents; {:.0} docs/s before \
         the kill (provider capacity {capacity:.0}); finished {after_kill:?} after the kill \
         (expected about {expected:?}, bound {bound:?})",
        kill.processed,
        kill.total,
        kill.claims.len(),
        kill.orphaned.len(),
        kill.rate
    );
    assert!(
        after_kill <= bound,
        "the two survivors took {after_kill:?} after the kill, over {bound:?}"
    );
}

/// Through replica 1 (not the one that started the migration) and through the tables: every
/// document processed once, each with a current target vector, and the replicas' shares add
/// up to the total, the dead one's standing where it died.
async fn counted_once(cluster: &Cluster, kill: &Kill) {
    let progress = cluster
        .api(1)
        .wait_for_state(MIGRATION, "completed", Duration::from_secs(5))
        .await;
    eprintln!("per replica {:?}", progress.replicas);
    assert_eq!(progress.total, DOCUMENTS as u64, "{progress:?}");
    assert_eq!(progress.processed, progress.total, "{progress:?}");
    assert_eq!((progress.skipped, progress.failed), (0, 0), "{progress:?}");
    let mut ids: Vec<&str> = progress.replicas.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, cluster.ids, "{:?}", progress.replicas);
    for replica in &progress.replicas {
        assert!(replica.processed > 0, "{:?}", progress.replicas);
        assert_eq!(replica.in_flight_batches, 0, "{:?}", progress.replicas);
    }
    let shares: u64 = progress.replicas.iter().map(|r| r.processed).sum();
    assert_eq!(shares, progress.processed, "{:?}", progress.replicas);
    let stored = cluster.processed_by_replica(MIGRATION).await;
    let victim = &cluster.ids[VICTIM];
    let what = "a dead replica's count does not move";
    assert_eq!(
        processed_of(&stored, victim),
        kill.victim_processed,
        "{what}"
    );
    assert_eq!(cluster.counts(MIGRATION).await.processed, DOCUMENTS as i64);

    assert_eq!(cluster.stale_vectors(TARGET).await, (0, DOCUMENTS as i64));
    let documents = cluster.api(1).all_documents(1_000).await;
    assert_eq!(documents.len(), DOCUMENTS);
    let stale: Vec<&str> = documents
        .iter()
        .filter(|d| !d.is_current_in(TARGET))
        .map(|d| d.id.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "without a current {TARGET} vector: {stale:?}"
    );
}

/// The batches in flight across the replicas never exceeded `max_concurrent` — in the lease
/// table, in the progress the replicas reported, at the provider — and exceeded one at times.
fn in_flight_within_bound(cluster: &Cluster, samples: &Samples, from: Instant, to: Instant) {
    let (looks, overlapping) = samples.counts();
    let in_leases = samples.max_leases(from, to);
    let reported = samples.max_reported(from, to);
    let requests = cluster.provider.requests();
    let at_provider = max_overlap(&requests, from, to);
    let embedded: usize = requests.iter().map(|r| r.inputs).sum();
    eprintln!(
        "in flight at most: {in_leases} leases, {reported} in progress, {at_provider} at the \
         provider; {overlapping} of {looks} looks saw more than one; {embedded} texts embedded \
         by the provider for {DOCUMENTS} documents"
    );
    assert!(in_leases <= MAX_CONCURRENT, "{in_leases} leases at once");
    assert!(reported <= MAX_CONCURRENT as u64, "{reported} reported");
    assert!(
        at_provider <= MAX_CONCURRENT,
        "{at_provider} at the provider"
    );
    assert!(in_leases > 1, "the bound was never exercised: {in_leases}");
    assert!(looks > 100, "the watch looked only {looks} times");
}

/// A replica's `processed` among `backfill_replicas` rows.
fn processed_of(stored: &[(String, i64)], replica: &str) -> i64 {
    let found = stored.iter().find(|(id, _)| id == replica);
    found.map(|(_, n)| *n).unwrap_or_default()
}
