//! When a rollback window ends, the coordinator records the target as the active model in the
//! store, then in memory (commit, then publish): a store that refuses the write leaves both
//! unchanged, so the window timer's next attempt records it.

use std::path::Path;

use chrono::Utc;
use reembed::App;
use reembed::domain::{Actor, BackfillConfig, Migration};
use reembed::embed::ModelRegistry;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, SqlitePool};

/// Makes the test's database refuse any change to the recorded active model, as a failing
/// disk or a lost lock would, until `allow_active_model_writes`.
async fn refuse_active_model_writes(dir: &Path) {
    let statements: Vec<String> = if crate::store::on_postgres() {
        vec![
            "CREATE FUNCTION refuse_active_model() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                .to_owned(),
            "CREATE TRIGGER refuse_active_model BEFORE INSERT OR UPDATE ON meta
             FOR EACH ROW WHEN (NEW.key = 'active_model') EXECUTE FUNCTION refuse_active_model()"
                .to_owned(),
        ]
    } else {
        [("refuse_insert", "INSERT"), ("refuse_update", "UPDATE")]
            .map(|(name, operation)| {
                format!(
                    "CREATE TRIGGER {name} BEFORE {operation} ON meta WHEN NEW.key = 'active_model'
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            })
            .to_vec()
    };
    execute(dir, &statements).await;
}

async fn allow_active_model_writes(dir: &Path) {
    let statements = if crate::store::on_postgres() {
        vec!["DROP TRIGGER refuse_active_model ON meta".to_owned()]
    } else {
        vec![
            "DROP TRIGGER refuse_insert".to_owned(),
            "DROP TRIGGER refuse_update".to_owned(),
        ]
    };
    execute(dir, &statements).await;
}

/// Runs `statements` on the database of the test's data directory, behind the server's back.
async fn execute(dir: &Path, statements: &[String]) {
    if crate::store::on_postgres() {
        let url = crate::store::database_of(dir).await;
        let mut db = PgConnection::connect(&url).await.expect("the database");
        for statement in statements {
            sqlx::raw_sql(statement)
                .execute(&mut db)
                .await
                .expect("executed");
        }
        return;
    }
    let file = SqliteConnectOptions::new().filename(dir.join("reembed.db"));
    let db = SqlitePool::connect_with(file).await.expect("the database");
    for statement in statements {
        sqlx::query(statement).execute(&db).await.expect("executed");
    }
    db.close().await;
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
        .create(plan, true, Utc::now(), Actor::Service)
        .await
        .expect("started");
    assert_eq!(coordinator.active_model(Utc::now()), "hash-v2");

    refuse_active_model_writes(dir.path()).await;
    let refused = coordinator.settle_active_model(Utc::now()).await;
    assert!(refused.is_err(), "the store refused: {refused:?}");
    assert_eq!(
        store.active_model().await.expect("read"),
        Some("hash-v1".into())
    );

    allow_active_model_writes(dir.path()).await;
    coordinator
        .settle_active_model(Utc::now())
        .await
        .expect("recorded on the second attempt");
    assert_eq!(
        store.active_model().await.expect("read"),
        Some("hash-v2".into())
    );
}
