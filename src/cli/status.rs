//! `reembed status [ID] [--watch]`: where the service routes now, and how far a migration
//! (the newest unless ID is given) has come. `--watch` polls its progress about once a second
//! with a progress bar until it settles, then prints the same report. `reembed history [ID]`
//! prints what happened to it, a line per entry.

use std::time::Duration;

use serde_json::{Value, json};

use super::http::{CliError, Server};
use super::lifecycle::{decode, named_or_newest, newest};
use super::wire::{Field, History, Migration, Progress, Routing, eta, print, rate, say};
use super::{ActionArgs, Exit, StatusArgs, bar};

/// How often `--watch` asks for progress: often enough to look live, rarely enough to cost
/// the server nothing.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Prints the status report; after `--watch`, the exit code says whether the migration
/// completed.
pub async fn run(server: &Server, args: &StatusArgs) -> Result<Exit, CliError> {
    let id = match &args.id {
        Some(id) => Some(id.clone()),
        None => newest(server).await?,
    };
    if args.watch {
        watch(server, id.as_deref().ok_or(CliError::NoMigration)?).await?;
    }
    let report = Report::fetch(server, id.as_deref()).await?;
    if args.json {
        say(report.json());
    } else {
        print(&report.fields(server)?);
    }
    match report.state() {
        Some(state) if args.watch && state != "completed" => Ok(Exit::Incomplete),
        _ => Ok(Exit::Success),
    }
}

/// Prints the history of the migration `args` names (the newest by default), oldest first.
pub async fn history(server: &Server, args: &ActionArgs) -> Result<Exit, CliError> {
    let id = named_or_newest(server, args.id.as_deref()).await?;
    let answer: Value = server.get(&["v1", "migrations", &id, "history"]).await?;
    if args.json {
        say(answer);
        return Ok(Exit::Success);
    }
    for event in decode::<History>(server, answer)?.events {
        say(event.line());
    }
    Ok(Exit::Success)
}

/// Follows migration `id` until it settles, drawing its progress on the terminal.
async fn watch(server: &Server, id: &str) -> Result<(), CliError> {
    let bar = bar::on_terminal(Some(0), "{bar:30} {pos}/{len} {wide_msg}");
    let segments = ["v1", "migrations", id, "progress"];
    loop {
        let progress: Progress = server.get(&segments).await?;
        bar.set_length(progress.total);
        bar.set_position(progress.done());
        bar.set_message(format!(
            "{}, {}, eta {}",
            progress.state,
            rate(progress.throughput_per_sec),
            eta(progress.eta_secs)
        ));
        if progress.is_settled() {
            bar.finish_and_clear();
            return Ok(());
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// What `status` shows, as the server answered it (kept as JSON for `--json`).
struct Report {
    routing: Value,
    /// The migration and its progress; `None` when the server has no migration yet.
    migration: Option<(Value, Value)>,
}

impl Report {
    async fn fetch(server: &Server, id: Option<&str>) -> Result<Self, CliError> {
        let routing = server.get(&["v1", "routing"]).await?;
        let migration = match id {
            Some(id) => Some((
                server.get(&["v1", "migrations", id]).await?,
                server.get(&["v1", "migrations", id, "progress"]).await?,
            )),
            None => None,
        };
        Ok(Self { routing, migration })
    }

    /// `{"routing": ..., "migration": ... | null, "progress": ... | null}`.
    fn json(&self) -> Value {
        let (migration, progress) = self.migration.clone().unzip();
        json!({ "routing": self.routing, "migration": migration, "progress": progress })
    }

    /// The migration's state, from its progress (the fresher of the two answers).
    fn state(&self) -> Option<&str> {
        self.migration.as_ref()?.1.get("state")?.as_str()
    }

    /// Routing lines, then the migration's identity, progress and outcome.
    fn fields(&self, server: &Server) -> Result<Vec<Field>, CliError> {
        let routing: Routing = decode(server, self.routing.clone())?;
        let mut fields = routing.fields();
        let Some((migration, progress)) = &self.migration else {
            fields.push(("migration", "none".to_owned()));
            return Ok(fields);
        };
        let migration: Migration = decode(server, migration.clone())?;
        let progress: Progress = decode(server, progress.clone())?;
        fields.extend([
            ("migration", migration.id.clone()),
            ("state", progress.state.clone()),
            ("source_model", migration.source_model.clone()),
            ("target_model", migration.target_model.clone()),
        ]);
        fields.extend(progress.fields());
        fields.extend(progress.confidence_fields());
        fields.extend(migration.outcome_fields());
        Ok(fields)
    }
}
