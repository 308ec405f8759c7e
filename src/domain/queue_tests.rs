use chrono::{Duration, TimeZone, Utc};

use super::*;

fn view(state: MigrationState, window_open: bool) -> QueueView {
    QueueView {
        id: "m".to_owned(),
        target_model: "hash-v2".to_owned(),
        state,
        window_open,
    }
}

/// One case per row of the module doc's table, for a write that carries the target vector
/// and one that lacks it.
#[test]
fn a_write_is_planned_by_the_table() {
    use MigrationState::*;
    use QueueStep::*;
    let refused = Err(Refused {
        migration: "m".to_owned(),
        document: "doc".to_owned(),
        target_model: "hash-v2".to_owned(),
    });
    let cases = [
        (None, Ok(Leave), Ok(Leave)),
        (Some(view(Planned, false)), Ok(Leave), Ok(Leave)),
        (Some(view(Cancelled, false)), Ok(Leave), Ok(Leave)),
        (Some(view(RolledBack, false)), Ok(Leave), Ok(Leave)),
        (Some(view(InProgress, false)), Ok(Dequeue), Ok(Enqueue)),
        (Some(view(Paused, false)), Ok(Dequeue), Ok(Enqueue)),
        (Some(view(Failed, false)), Ok(Dequeue), Ok(Enqueue)),
        (Some(view(Completed, true)), Ok(Dequeue), Ok(Enqueue)),
        (Some(view(Completed, false)), Ok(Leave), refused),
    ];
    for (latest, carrying, lacking) in cases {
        let latest = latest.as_ref();
        assert_eq!(plan(latest, "doc", true), carrying, "{latest:?}, carrying");
        assert_eq!(plan(latest, "doc", false), lacking, "{latest:?}, lacking");
    }
}

#[test]
fn a_completed_window_stays_open_until_its_end_and_while_repairs_are_pending() {
    let now = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
    let done = Counts {
        total: 10,
        processed: 8,
        skipped: 2,
        ..Counts::default()
    };
    let repairing = Counts { total: 11, ..done };
    let at = |state, counts, ends_at| {
        QueueView::new("m".into(), "t".into(), state, counts, ends_at, now).window_open
    };
    let later = Some(now + Duration::seconds(1));
    let earlier = Some(now - Duration::seconds(1));
    assert!(at(MigrationState::Completed, done, later));
    assert!(!at(MigrationState::Completed, done, earlier));
    assert!(!at(MigrationState::Completed, done, None));
    assert!(at(MigrationState::Completed, repairing, earlier));
    assert!(!at(MigrationState::InProgress, repairing, later));
}

#[test]
fn each_queue_change_moves_the_counts_it_names() {
    let delta = |total, processed, skipped, failed, truncated| CountsDelta {
        total,
        processed,
        skipped,
        failed,
        truncated,
        tokens_embedded: 0,
    };
    let cases = [
        (QueueChange::Queued { newly: true }, delta(1, 0, 0, 0, 0)),
        (QueueChange::Queued { newly: false }, delta(0, 0, 0, 0, 0)),
        (
            QueueChange::Embedded {
                had_failed: false,
                truncated: false,
            },
            delta(0, 1, 0, 0, 0),
        ),
        (
            QueueChange::Embedded {
                had_failed: true,
                truncated: true,
            },
            delta(0, 1, 0, -1, 1),
        ),
        (
            QueueChange::Skipped { had_failed: true },
            delta(0, 0, 1, -1, 0),
        ),
        (
            QueueChange::Deleted { had_failed: false },
            delta(-1, 0, 0, 0, 0),
        ),
        (
            QueueChange::Deleted { had_failed: true },
            delta(-1, 0, 0, -1, 0),
        ),
        (QueueChange::Failed { newly: true }, delta(0, 0, 0, 1, 0)),
        (QueueChange::Failed { newly: false }, delta(0, 0, 0, 0, 0)),
        (
            QueueChange::SkipsRequeued {
                listed: 5,
                requeued: 3,
                current: 0,
            },
            delta(-2, 0, -5, 0, 0),
        ),
        (
            QueueChange::SkipsRequeued {
                listed: 5,
                requeued: 2,
                current: 1,
            },
            delta(-2, 1, -5, 0, 0),
        ),
    ];
    for (change, expected) in cases {
        assert_eq!(change.delta(), expected, "{change:?}");
    }
}

#[test]
fn deltas_compose_and_apply_without_running_counts_below_zero() {
    let queued = QueueChange::Queued { newly: true }.delta();
    let embedded = QueueChange::Embedded {
        had_failed: false,
        truncated: true,
    }
    .delta();
    let both = queued.then(embedded);
    assert_eq!(
        both,
        CountsDelta {
            total: 1,
            processed: 1,
            truncated: 1,
            ..CountsDelta::default()
        }
    );
    assert!(!both.is_zero());
    assert!(CountsDelta::default().is_zero());
    let counts = QueueChange::Deleted { had_failed: true }
        .delta()
        .applied_to(Counts::default());
    assert_eq!(counts, Counts::default());
}

#[test]
fn a_claim_takes_the_lowest_free_slot_below_max_concurrent() {
    assert_eq!(free_slot(&[], 4), Some(0));
    assert_eq!(free_slot(&[0, 2], 4), Some(1));
    assert_eq!(free_slot(&[0, 1, 2], 4), Some(3));
    assert_eq!(free_slot(&[0, 1, 2, 3], 4), None);
}

#[test]
fn slots_held_above_a_lowered_max_concurrent_still_count() {
    assert_eq!(free_slot(&[3], 2), Some(0));
    assert_eq!(free_slot(&[2, 3], 2), None, "two held, two allowed");
    assert_eq!(free_slot(&[0, 3], 2), None, "slot 3 counts against the two");
    assert_eq!(free_slot(&[1], 2), Some(0));
    assert_eq!(free_slot(&[], 0), None);
}
