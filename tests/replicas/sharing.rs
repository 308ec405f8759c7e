//! Three replicas share one migration: every replica takes batches, the batches in flight
//! across them never exceed `max_concurrent`, and when one is SIGKILLed mid-run the other two
//! redo its batches once its leases expire and finish, with every document counted once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, DOCUMENTS, LEASE, TARGET, TEXT_CHARS, corpus, one_at_a_time};
use crate::helpers::{PATIENCE, eventually};
use crate::watch::{Watch, max_overlap};
use crate::wire::Progress;

const MIGRATION: &str = "shared";
const BATCH_SIZE: usize = 50;
const MAX_CONCURRENT: usize = 4;
/// The replica that is killed.
const VICTIM: usize = 2;
/// The share of the documents processed before the kill.
const KILL_AT: f64 = 0.4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_migration_within_max_concurrent_and_survive_a_kill() {
    let _alone = one_at_a_time().await;
    let mut cluster = Cluster::start().await;
    let loading = Instant::now();
    cluster.load(&corpus()).await;
    eprintln!("loaded {DOCUMENTS} documents in {:?}", loading.elapsed());

    let config = json!({ "batch_size": BATCH_SIZE, "max_concurrent": MAX_CONCURRENT });
    let body = json!({ "id": MIGRATION, "target_model": TARGET, "config": config, "start": false });
    // Planned first, so the watch sees its first claims.
    cluster.api(0).start_migration(&body).await;
    let watch = Watch::start(&cluster, MIGRATION);
    let started = Instant::now();
    let start = cluster.api(0).action(MIGRATION, "start").await;
    start.ok::<Value>();

    // Every replica takes batches before one dies.
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

    // SIGKILL while the victim holds a lease, so that its batch must be redone by another.
    let victim = cluster.ids[VICTIM].clone();
    let held: Vec<String> = eventually(PATIENCE, "the victim to hold a lease", || async {
        let leases = cluster.live_leases(MIGRATION).await;
        let held: Vec<String> = leases
            .into_iter()
            .filter(|lease| lease.replica == victim)
            .map(|lease| lease.token)
            .collect();
        if held.is_empty() {
            Err("no lease".to_owned())
        } else {
            Ok(held)
        }
    })
    .await;
    watch.forget(VICTIM).await;
    cluster.kill(VICTIM);
    let killed = Instant::now();
    let orphaned = cluster.queued_under(&held).await;
    let at_kill = cluster.counts(MIGRATION).await;
    let victim_processed = processed_of(&cluster.processed_by_replica(MIGRATION).await, &victim);
    let rate = at_kill.processed as f64 / started.elapsed().as_secs_f64();

    let done = cluster
        .api(0)
        .wait_for_state(MIGRATION, "completed", PATIENCE)
        .await;
    let after_kill = killed.elapsed();
    let finished = Instant::now();
    let samples = watch.stop().await;

    // The other two finish within the lease plus the remaining work at the rate so far,
    // doubled, plus a few seconds for the routing snapshots to report completion.
    let remaining = (at_kill.total - at_kill.processed) as f64;
    let expected = LEASE + Duration::from_secs_f64(remaining / rate);
    let bound = expected * 2 + Duration::from_secs(5);
    let capacity = crate::cluster::speed().docs_per_second(TEXT_CHARS, BATCH_SIZE);
    eprintln!(
        "killed {victim} at {at_kill:?} holding {} claims of {} documents; rate before the kill \
         {rate:.0} docs/s (provider capacity {capacity:.0}); finished {after_kill:?} after the \
         kill (expected about {expected:?}, bound {bound:?}); {:?} in all",
        held.len(),
        orphaned.len(),
        started.elapsed()
    );
    assert!(
        after_kill <= bound,
        "the two survivors took {after_kill:?} after the kill, over {bound:?}"
    );
    assert!(
        !orphaned.is_empty(),
        "the victim was killed holding a lease, with documents queued under it"
    );

    // Counts, through a replica other than the one that started the migration and through
    // the tables: every document once, and the replicas' shares add up to it.
    let progress = final_progress(&cluster, 1).await;
    assert_eq!(progress.total, DOCUMENTS as u64, "{progress:?}");
    assert_eq!(progress.processed, progress.total, "{progress:?}");
    assert_eq!((progress.skipped, progress.failed), (0, 0), "{progress:?}");
    assert_eq!(done.processed, progress.processed, "{done:?}");
    let mut ids: Vec<&str> = progress.replicas.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, cluster.ids, "{:?}", progress.replicas);
    for replica in &progress.replicas {
        assert!(replica.processed > 0, "{:?}", progress.replicas);
        assert_eq!(replica.in_flight_batches, 0, "{:?}", progress.replicas);
    }
    let shared: u64 = progress.replicas.iter().map(|r| r.processed).sum();
    assert_eq!(shared, progress.processed, "{:?}", progress.replicas);
    let stored = cluster.processed_by_replica(MIGRATION).await;
    assert_eq!(
        processed_of(&stored, &victim),
        victim_processed,
        "a dead replica's count does not move"
    );
    let counts = cluster.counts(MIGRATION).await;
    assert_eq!(counts.processed, DOCUMENTS as i64, "{counts:?}");
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

    // In flight across the replicas: never over max_concurrent, and over one at times.
    let (looks, overlapping) = samples.counts();
    let in_leases = samples.max_leases(started, finished);
    let reported = samples.max_reported(started, finished);
    let at_provider = max_overlap(&cluster.provider.requests(), started, finished);
    let embedded: usize = cluster.provider.requests().iter().map(|r| r.inputs).sum();
    eprintln!(
        "in flight at most: {in_leases} leases, {reported} in progress, {at_provider} at the \
         provider; {overlapping} of {looks} looks saw more than one; per replica {:?}; \
         {embedded} documents embedded by the provider for {DOCUMENTS}",
        progress.replicas
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

/// The progress replica `i` reports once its view of the migration shows it completed.
async fn final_progress(cluster: &Cluster, i: usize) -> Progress {
    cluster
        .api(i)
        .wait_for_state(MIGRATION, "completed", Duration::from_secs(5))
        .await
}

fn processed_of(stored: &[(String, i64)], replica: &str) -> i64 {
    let found = stored.iter().find(|(id, _)| id == replica);
    found.map(|(_, n)| *n).unwrap_or_default()
}
