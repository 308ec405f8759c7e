//! Calls dropped halfway, as a request is when its client hangs up or its time runs out:
//! whatever point they are dropped at, the database and the in-memory state the service
//! answers from (indexes, counts, the published migration) still agree.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use reembed::App;
use reembed::coordinator::Coordinator;
use reembed::documents::{Documents, NewDocument};
use reembed::domain::{Actor, BackfillConfig, Event, Migration, MigrationState};
use reembed::embed::ModelRegistry;
use reembed::embed::builtin::HashEmbedder;
use reembed::index::IndexSet;
use reembed::store::Store;
use serde_json::json;
use tempfile::TempDir;

/// The polls after which a call is dropped: from before its first `.await` completes to well
/// after a commit (the store's thread runs between polls).
const DROP_POINTS: std::ops::RangeInclusive<usize> = 1..=40;

struct Service {
    _dir: TempDir,
    store: Arc<dyn Store>,
    coordinator: Arc<Coordinator>,
    indexes: Option<Arc<IndexSet>>,
    documents: Arc<Documents>,
}

impl Service {
    async fn open() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = crate::store::config_in(dir.path()).await;
        let app = App::build(config, ModelRegistry::builtin())
            .await
            .expect("the app");
        Self {
            _dir: dir,
            store: app.store,
            coordinator: app.coordinator,
            indexes: app.indexes,
            documents: app.documents,
        }
    }

    fn document(id: &str) -> NewDocument {
        NewDocument {
            id: id.to_owned(),
            text: format!("the text of {id}"),
            metadata: json!({}),
        }
    }

    async fn stored(&self, id: &str) -> bool {
        self.store.get_document(id).await.expect("read").is_some()
    }

    /// Whether `id` is what an exact search for its own text finds first: in the in-memory
    /// indexes, or in the database when the store searches its own.
    async fn indexed(&self, id: &str) -> bool {
        let vector = HashEmbedder::hash_v1().embed_one(&Self::document(id).text);
        let filter = reembed::index::filter::Filter::default();
        let hits = match (&self.indexes, self.store.vector_search()) {
            (Some(indexes), _) => indexes.search("hash-v1", &vector, 1, &filter, true).hits,
            (None, Some(search)) => {
                let found = search.nearest("hash-v1", &vector, 1, &filter, true).await;
                found.expect("search the database").hits
            }
            (None, None) => panic!("no index to search"),
        };
        hits.first().is_some_and(|hit| hit.id == id)
    }
}

/// How long work a dropped call left running may take to finish.
const SETTLE: Duration = Duration::from_secs(5);

/// Polls `call` `polls` times, letting other threads run in between, then drops it.
async fn drop_after<F: Future>(call: F, polls: usize) {
    let mut call = Box::pin(call);
    for _ in 0..polls {
        if (&mut call).now_or_never().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
        tokio::task::yield_now().await;
    }
    drop(call);
}

/// Reads the two sides with `read` until they agree, for up to `SETTLE`, and returns the
/// last reading: a section a dropped call began may still be finishing, but a disagreement
/// that outlasts it stays until a restart.
async fn settled<T: PartialEq>(mut read: impl AsyncFnMut() -> (T, T)) -> (T, T) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let (left, right) = read().await;
        if left == right || tokio::time::Instant::now() >= deadline {
            return (left, right);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_or_delete_is_in_the_index_exactly_when_it_is_stored() {
    let service = Service::open().await;
    for polls in DROP_POINTS {
        let id = format!("doc-{polls}");
        let write = [Service::document(&id)];
        drop_after(service.documents.upsert(&write), polls).await;
        let (stored, indexed) =
            settled(async || (service.stored(&id).await, service.indexed(&id).await)).await;
        assert_eq!(stored, indexed, "write dropped after {polls} polls");

        service.documents.upsert(&write).await.expect("write");
        drop_after(service.documents.delete(&id), polls).await;
        let (stored, indexed) =
            settled(async || (service.stored(&id).await, service.indexed(&id).await)).await;
        assert_eq!(stored, indexed, "delete dropped after {polls} polls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pause_or_resume_leaves_the_published_state_as_stored() {
    let service = Service::open().await;
    // One document keeps the migration from completing on start; no backfill runs here.
    let write = [Service::document("queued")];
    service.documents.upsert(&write).await.expect("write");
    let plan = Migration::plan(
        "m".to_owned(),
        "hash-v1".to_owned(),
        "hash-v2".to_owned(),
        BackfillConfig::default(),
        Utc::now(),
    );
    let coordinator = &service.coordinator;
    coordinator
        .create(plan, true, Utc::now(), Actor::Service)
        .await
        .expect("start");
    for polls in DROP_POINTS {
        let stored = service.store.migration("m").await.expect("read");
        let stored = stored.expect("the migration").state;
        let event = match stored {
            MigrationState::InProgress => Event::Pause { reason: None },
            _ => Event::Resume,
        };
        drop_after(
            coordinator.transition("m", event, Utc::now(), Actor::Service),
            polls,
        )
        .await;
        let (stored, published) = settled(async || {
            let stored = service.store.migration("m").await.expect("read");
            let published = coordinator.latest().expect("the migration");
            (stored.map(|m| m.state), Some(published.state))
        })
        .await;
        assert_eq!(published, stored, "dropped after {polls} polls");
    }
}
