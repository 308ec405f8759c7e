//! Operating a migration that three replicas share, each request through a different replica:
//! writes through all of them while it runs leave every document with a current target vector;
//! a pause sent to one stops the claims of all within 2 s, batches in flight excepted; a PATCH
//! of `max_concurrent` sent to one bounds the batches of all once those in flight end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, DOCUMENTS, LEASE, Lease, SOURCE, TARGET, corpus, one_at_a_time};
use crate::helpers::{PATIENCE, eventually};
use crate::watch::{Watch, arrivals, max_overlap, start_watched};
use crate::writers::{Report, Writers, Written};

const MIGRATION: &str = "operated";
const MAX_CONCURRENT: u64 = 4;
/// How long a state or config change may take to reach every replica (API.md, Replicas).
const PROPAGATION: Duration = Duration::from_secs(2);
/// How long the test watches for claims that should not happen: after a pause, or above a
/// lowered `max_concurrent`.
const QUIET: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_pause_and_patch_through_any_replica_apply_to_all() {
    let _alone = one_at_a_time().await;
    let cluster = Cluster::start().await;
    cluster.load(&corpus()).await;
    let config = json!({ "batch_size": 50, "max_concurrent": MAX_CONCURRENT });
    let (watch, started) = start_watched(&cluster, MIGRATION, config).await;

    let writes = write_during_the_backfill(&cluster, started).await;
    pause_stops_every_replica(&cluster, &watch).await;
    patch_bounds_every_replica(&cluster, &watch).await;
    cluster
        .api(2)
        .wait_for_state(MIGRATION, "completed", PATIENCE)
        .await;
    let finished = Instant::now();
    eprintln!("completed in {:?}", started.elapsed());

    let samples = watch.stop().await;
    let in_leases = samples.max_leases(started, finished);
    // The writes' requests queue at the provider too; the backfill's carry corpus texts.
    let mut backfill = cluster.provider.requests();
    backfill.retain(|request| request.head.starts_with("corpus"));
    let at_provider = max_overlap(&backfill, started, finished);
    assert!(in_leases <= MAX_CONCURRENT as usize, "{in_leases} leases");
    let most = MAX_CONCURRENT as usize;
    assert!(at_provider <= most, "{at_provider} at the provider");
    writes_are_current_everywhere(&cluster, &writes.last).await;
    counted_once(&cluster, &writes).await;
}

/// Writes through every replica while the backfill runs, until a third of it is done.
async fn write_during_the_backfill(cluster: &Cluster, started: Instant) -> Report {
    let writers = Writers::start(cluster);
    processed_at_least(cluster, DOCUMENTS as u64 / 3).await;
    let writes = writers.stop().await;
    let rewritten = writes.last.values().filter(|w| w.rewrite).count();
    eprintln!(
        "{} ids written ({rewritten} corpus documents rewritten; {} dual rewrites, {} writes \
         on the source alone) in {:?}",
        writes.last.len(),
        writes.dual_rewrites,
        writes.source_only,
        started.elapsed()
    );
    // A replica that had not yet seen the migration start wrote on the source alone, and its
    // write's transaction queued the document; within 2 s every replica dual-writes.
    if let Some(last) = writes.last_source_only {
        let late = last.saturating_duration_since(started);
        let what = "a write on the source alone";
        assert!(late < PROPAGATION, "{what} {late:?} after the start");
    }
    writes
}

/// The final counts, through replica 1: the corpus and the documents queued later by writes on
/// the source alone, each processed once, by a batch or by a dual write.
async fn counted_once(cluster: &Cluster, writes: &Report) {
    let progress = cluster
        .api(1)
        .wait_for_state(MIGRATION, "completed", PROPAGATION)
        .await;
    eprintln!("final {progress:?}");
    let (total, queued_later) = (progress.total, writes.source_only as u64);
    let corpus = DOCUMENTS as u64;
    assert!(
        (corpus..=corpus + queued_later).contains(&total),
        "total {total}: {queued_later} writes on the source alone"
    );
    assert_eq!(progress.processed, total, "{progress:?}");
    assert_eq!((progress.skipped, progress.failed), (0, 0), "{progress:?}");
    // A dual write that takes a queued document off the queue counts it, outside any
    // replica's batches: the batches account for the rest.
    let batches: u64 = progress.replicas.iter().map(|r| r.processed).sum();
    let dual = writes.dual_rewrites as u64;
    assert!(
        batches <= progress.processed && batches + dual >= progress.processed,
        "batches wrote {batches}, {dual} dual rewrites, {} processed",
        progress.processed
    );
}

/// Waits until the migration row counts `n` documents processed.
async fn processed_at_least(cluster: &Cluster, n: u64) {
    eventually(PATIENCE, &format!("{n} documents processed"), || async {
        let counts = cluster.counts(MIGRATION).await;
        if counts.processed as u64 >= n {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
}

/// Pauses through replica 1: every replica reports the pause within 2 s, and after that no
/// replica claims a batch, no backfill request reaches the provider and the counts stand
/// still, once the batches in flight at the pause have committed. Resumes through replica 0.
async fn pause_stops_every_replica(cluster: &Cluster, watch: &Watch) {
    let paused = Instant::now();
    cluster
        .api(1)
        .action(MIGRATION, "pause")
        .await
        .ok::<Value>();
    let held = cluster.live_leases(MIGRATION).await;
    for i in 0..cluster.ids.len() {
        state_reaches(cluster, i, "paused", paused).await;
    }
    tokio::time::sleep_until((paused + PROPAGATION).into()).await;
    let what = "the batches in flight to commit";
    leases_until(cluster, LEASE + PROPAGATION, what, <[Lease]>::is_empty).await;
    let counts = cluster.counts(MIGRATION).await;
    let shares = cluster.processed_by_replica(MIGRATION).await;
    tokio::time::sleep(QUIET).await;
    let quiet_end = Instant::now();
    assert_eq!(
        cluster.counts(MIGRATION).await,
        counts,
        "counts moved while paused"
    );
    assert_eq!(cluster.processed_by_replica(MIGRATION).await, shares);
    let requests = cluster.provider.requests();
    let late = arrivals(&requests, paused + PROPAGATION, quiet_end);
    assert!(
        late.is_empty(),
        "backfill requests after the pause: {late:?}"
    );
    let resumed = Instant::now();
    cluster
        .api(0)
        .action(MIGRATION, "resume")
        .await
        .ok::<Value>();
    let samples = watch.so_far();
    let drained = samples
        .between(paused, resumed)
        .find(|s| s.leases.is_empty());
    let drained = drained.expect("a look with no batch in flight").at;
    let claimed = samples.claims_between(paused, paused + PROPAGATION);
    let late = samples.claims_between(paused + PROPAGATION, resumed);
    eprintln!(
        "pause: {} claims in flight, {} claims taken within 2 s, in flight drained {:?} after \
         the pause",
        held.len(),
        claimed.len(),
        drained - paused
    );
    assert!(late.is_empty(), "claims taken after the pause: {late:?}");
    for i in 0..cluster.ids.len() {
        state_reaches(cluster, i, "in_progress", resumed).await;
    }
}

/// Lowers `max_concurrent` to 1 through replica 2: every replica shows it within 2 s, and once
/// the batches in flight then have ended, at most one is in flight across the replicas, while
/// the backfill goes on. Raises it again through replica 0, and more than one runs again.
async fn patch_bounds_every_replica(cluster: &Cluster, watch: &Watch) {
    let patched = Instant::now();
    let patch = json!({ "max_concurrent": 1 });
    let reply = cluster.api(2).patch_config(MIGRATION, &patch).await;
    reply.ok::<Value>();
    let held: Vec<String> = cluster
        .live_leases(MIGRATION)
        .await
        .into_iter()
        .map(|lease| lease.token)
        .collect();
    for i in 0..cluster.ids.len() {
        config_reaches(cluster, i, 1, patched).await;
    }
    let what = "the batches in flight to end";
    let ended = |live: &[Lease]| live.iter().all(|lease| !held.contains(&lease.token));
    leases_until(cluster, LEASE + PROPAGATION, what, ended).await;
    let drained = Instant::now();
    tokio::time::sleep(QUIET).await;
    let raised = Instant::now();
    let patch = json!({ "max_concurrent": MAX_CONCURRENT });
    let reply = cluster.api(0).patch_config(MIGRATION, &patch).await;
    reply.ok::<Value>();
    eprintln!(
        "patch to 1: {} claims in flight, ended {:?} after",
        held.len(),
        drained - patched
    );
    one_batch_between(cluster, watch, drained, raised);

    for i in 0..cluster.ids.len() {
        config_reaches(cluster, i, MAX_CONCURRENT, raised).await;
    }
    let what = "more than one batch in flight again";
    leases_until(cluster, PROPAGATION + LEASE, what, |live| live.len() > 1).await;
}

/// At most one batch was in flight across the replicas in `[from, to)` — in the lease table,
/// in the progress the replicas reported, at the provider — and the backfill went on.
fn one_batch_between(cluster: &Cluster, watch: &Watch, from: Instant, to: Instant) {
    let samples = watch.so_far();
    let in_leases = samples.max_leases(from, to);
    let reported = samples.max_reported(from, to);
    let at_provider = max_overlap(&cluster.provider.requests(), from, to);
    let claims = samples.claims_between(from, to);
    let mut claimers: Vec<&str> = claims.iter().map(|(_, r)| r.as_str()).collect();
    claimers.sort_unstable();
    claimers.dedup();
    eprintln!(
        "then {} claims by {claimers:?} in {:?}; at most {in_leases} leases, {reported} \
         reported, {at_provider} at the provider",
        claims.len(),
        to - from
    );
    let after = "after the PATCH";
    assert!(in_leases <= 1, "{in_leases} leases at once {after}");
    assert!(reported <= 1, "{reported} in flight reported {after}");
    assert!(at_provider <= 1, "{at_provider} requests at once {after}");
    assert!(
        claims.len() >= 2,
        "the backfill went on under the new bound"
    );
}

/// Waits up to `timeout` until the unexpired leases of the migration are `done`.
async fn leases_until(
    cluster: &Cluster,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Lease]) -> bool,
) {
    eventually(timeout, what, || async {
        let live = cluster.live_leases(MIGRATION).await;
        if done(&live) {
            Ok(())
        } else {
            Err(format!("{live:?}"))
        }
    })
    .await;
}

/// Every written document, read through a replica other than the one it was written
/// through, has the text and version written last and vectors of both models for that version;
/// and no document at all lacks a current target vector, by the API and by the tables.
async fn writes_are_current_everywhere(cluster: &Cluster, written: &BTreeMap<String, Written>) {
    for (id, write) in written {
        let reader = (write.replica + 1) % cluster.ids.len();
        let document = cluster.api(reader).get_document(id).await;
        assert_eq!(
            (document.version, &document.text),
            (write.version, &write.text),
            "{id} as replica {reader} reads it, written through replica {}",
            write.replica
        );
        assert!(document.is_current_in(TARGET), "{document:?}");
        assert!(document.is_current_in(SOURCE), "{document:?}");
    }
    let news = written.values().filter(|w| !w.rewrite).count();
    let documents = cluster.api(0).all_documents(1_000).await;
    assert_eq!(documents.len(), DOCUMENTS + news);
    let stale: Vec<&str> = documents
        .iter()
        .filter(|d| !d.is_current_in(TARGET))
        .map(|d| d.id.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "without a current {TARGET} vector: {stale:?}"
    );
    let all = (DOCUMENTS + news) as i64;
    assert_eq!(cluster.stale_vectors(TARGET).await, (0, all));
}

/// Waits up to 2 s after `since` for replica `i` to report the migration in `state`.
async fn state_reaches(cluster: &Cluster, i: usize, state: &str, since: Instant) {
    let what = format!("replica {i} to report {state}");
    let left = (since + PROPAGATION).saturating_duration_since(Instant::now());
    eventually(left, &what, || async {
        let migration = cluster.api(i).migration(MIGRATION).await;
        if migration.state == state {
            Ok(())
        } else {
            Err(migration.state)
        }
    })
    .await;
}

/// Waits up to 2 s after `since` for replica `i` to show `max_concurrent`.
async fn config_reaches(cluster: &Cluster, i: usize, max_concurrent: u64, since: Instant) {
    let what = format!("replica {i} to show max_concurrent {max_concurrent}");
    let left = (since + PROPAGATION).saturating_duration_since(Instant::now());
    eventually(left, &what, || async {
        let migration = cluster.api(i).migration(MIGRATION).await;
        if migration.config.max_concurrent == max_concurrent {
            Ok(())
        } else {
            Err(format!("{:?}", migration.config))
        }
    })
    .await;
}
