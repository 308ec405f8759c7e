//! `GET /v1/migrations/{id}/events`: a Server-Sent Events feed of one migration.
//!
//! It sends a `progress` snapshot on connect, then every lifecycle change as a `state` event
//! the moment it is published, and further `progress` snapshots at most once a second while
//! counts move. The feed ends after the migration reaches a terminal state (completed,
//! cancelled or rolled back), or at once when the server begins to shut down. Waking is driven by the coordinator's change channel, so an idle
//! migration costs nothing but the keep-alive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::Utc;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::AppState;
use super::cost::Spending;
use super::error::{ApiError, AppPath, Problem};
use super::migrations::{MigrationView, ProgressView};
use crate::coordinator::{Coordinator, Progress};
use crate::domain::MigrationState;
use crate::embed::ModelRegistry;

/// Least time between two `progress` events.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Where one subscriber's feed stands.
struct Feed {
    coordinator: Arc<Coordinator>,
    /// For the throttled time in each snapshot.
    models: ModelRegistry,
    id: String,
    changes: watch::Receiver<u64>,
    /// The last snapshot sent and when; `None` before the first.
    sent: Option<(Instant, Progress)>,
    /// Events decided but not yet handed to the stream.
    queued: VecDeque<Event>,
    /// Set once the terminal state is queued, or the coordinator's channel closed.
    finished: bool,
}

/// Live progress and state changes of a migration.
#[utoipa::path(get, path = "/v1/migrations/{id}/events", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, description = "`text/event-stream` of `progress` events (a ProgressView) and `state` events (a MigrationView)", content_type = "text/event-stream"),
              (status = 404, body = Problem)))]
pub async fn migration_events(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.coordinator.progress(&id, Utc::now()).await?;
    let feed = Feed {
        changes: state.coordinator.subscribe(),
        coordinator: state.coordinator,
        models: state.models,
        id,
        sent: None,
        queued: VecDeque::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next_event().await?;
        Some((Ok(event), feed))
    })
    .take_until(state.stopping.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

impl Feed {
    /// Waits for the next event worth sending; `None` once the feed is over.
    async fn next_event(&mut self) -> Option<Event> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        if self.finished {
            return None;
        }
        loop {
            self.changes.borrow_and_update();
            let progress = self.coordinator.progress(&self.id, Utc::now()).await.ok()?;
            self.queue_events_for(progress);
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            self.wait().await;
            if self.finished {
                return None;
            }
        }
    }

    /// Queues what `progress` is worth sending now: a state change at once (preceded by the
    /// final counts when it ends the feed), a count change once the interval has passed.
    fn queue_events_for(&mut self, progress: Progress) {
        let state = progress.migration.state;
        let state_changed = match &self.sent {
            // A feed opened on a finished migration sends its snapshot and transition, then ends.
            None if !is_terminal(state) => {
                self.send_progress(progress);
                return;
            }
            None => true,
            Some((_, last)) => last.migration.state != state,
        };
        if state_changed {
            self.finished = is_terminal(state);
            if self.finished {
                self.send_progress(progress.clone());
            }
            let view = MigrationView::from(progress.migration.clone());
            self.queued
                .push_back(Event::default().event("state").data(json(&view)));
            self.sent = Some((Instant::now(), progress));
            return;
        }
        let counts_moved = self.sent.as_ref().is_some_and(|(at, last)| {
            last.migration.counts != progress.migration.counts && at.elapsed() >= PROGRESS_INTERVAL
        });
        if counts_moved {
            self.send_progress(progress);
        }
    }

    /// Queues a `progress` event. Its `cost_remaining_estimate` extrapolates from the batches
    /// counted so far and is null before the first: the feed reads no texts from the store.
    fn send_progress(&mut self, progress: Progress) {
        let m = &progress.migration;
        let spending = Spending::new(m.counts, self.models.price(&m.target_model), None);
        let view = ProgressView::new(progress.clone(), &self.models, spending);
        self.queued
            .push_back(Event::default().event("progress").data(json(&view)));
        self.sent = Some((Instant::now(), progress));
    }

    /// Sleeps until the coordinator publishes a change, or until a throttled snapshot is due.
    async fn wait(&mut self) {
        let due = self.sent.as_ref().map(|(at, _)| *at + PROGRESS_INTERVAL);
        tokio::select! {
            changed = self.changes.changed() => {
                if changed.is_err() {
                    self.finished = true;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some_and(|d| d > Instant::now()) => {}
        }
    }
}

fn is_terminal(state: MigrationState) -> bool {
    matches!(
        state,
        MigrationState::Completed | MigrationState::Cancelled | MigrationState::RolledBack
    )
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
}
