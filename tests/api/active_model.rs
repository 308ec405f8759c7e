//! When a rollback window ends, the coordinator records the target as the active model in the
//! store, then in memory (commit, then publish): a store that refuses the write leaves both
//! unchanged, so the window timer's next attempt records it.

use chrono::Utc;
use reembed::App;
use reembed::domain::{BackfillConfig, Migration};
use reembed::embed::ModelRegistry;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

/// Makes the database refuse any change to the recorded active model, as a failing disk or a
/// lost lock would, until `allow_active_model_writes`.
async fn refuse_active_model_writes(db: &SqlitePool) {
    for (name, operation) in [("refuse_insert", "INSERT"), ("refuse_update", "UPDATE")] {
        let trigger = format!(
            "CREATE TRIGGER {name} BEFORE {operation} ON meta WHEN NEW.key = 'active_model'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        );
        sqlx::query(&trigger).execute(db).await.expect("a trigger");
    }
}

async fn allow_active_model_writes(db: &SqlitePool) {
    for name in ["refuse_insert", "refuse_update"] {
        let drop = format!("DROP TRIGGER {name}");
        sqlx::query(&drop).execute(db).await.expect("dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_model_the_store_refused_is_recorded_on_the_next_attempt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::store::config_in(dir.path()).await;
    let app = App::build(config, ModelRegistry::builtin())
        .await
        .expect("the app");
    let (store, coordinator) = (app.store, app.coordinator);
    // No documents and no rollback window: the migration completes on start and its target
    // is the active model at once.
    let config = BackfillConfig {
        rollback_window_secs: 0,
        ..BackfillConfig::default()
    };
    let plan = Migration::plan(
        "m".into(),
        "hash-v1".into(),
        "hash-v2".into(),
        config,
        Utc::now(),
    );
    coordinator
        .create(plan, true, Utc::now())
        .await
        .expect("started");
    assert_eq!(coordinator.active_model(Utc::now()), "hash-v2");

    let file = SqliteConnectOptions::new().filename(dir.path().join("reembed.db"));
    let db = SqlitePool::connect_with(file).await.expect("the database");
    refuse_active_model_writes(&db).await;
    let refused = coordinator.settle_active_model(Utc::now()).await;
    assert!(refused.is_err(), "the store refused: {refused:?}");
    assert_eq!(
        store.active_model().await.expect("read"),
        Some("hash-v1".into())
    );

    allow_active_model_writes(&db).await;
    coordinator
        .settle_active_model(Utc::now())
        .await
        .expect("recorded on the second attempt");
    assert_eq!(
        store.active_model().await.expect("read"),
        Some("hash-v2".into())
    );
}
