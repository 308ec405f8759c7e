//! `reembed migrate` and the lifecycle calls (`pause`, `resume`, `cancel`, `rollback`,
//! `finalize`, `cutover`): one request each (API.md "Migrations"), printing the migration the
//! server answers with, or its refusal.

use serde_json::{Map, Value, json};

use super::http::{CliError, Server};
use super::wire::{Migration, MigrationList, MigrationPlan, print, say};
use super::{ActionArgs, Exit, MigrateArgs};

/// A lifecycle call of API.md's state table.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Pause {
        reason: Option<&'a str>,
    },
    Resume,
    Cancel,
    Rollback,
    Finalize,
    /// Overrides the cutover gate; the reason is required and kept in the history.
    Cutover {
        reason: &'a str,
    },
}

impl Action<'_> {
    /// The last path segment of `POST /v1/migrations/{id}/{call}`.
    fn call(self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Rollback => "rollback",
            Self::Finalize => "finalize",
            Self::Cutover { .. } => "cutover",
        }
    }

    /// The request body: `cutover` always takes its reason, `pause` only when given one.
    fn body(self) -> Option<Value> {
        match self {
            Self::Pause {
                reason: Some(reason),
            }
            | Self::Cutover { reason } => Some(json!({ "reason": reason })),
            _ => None,
        }
    }
}

/// Parses a fractional flag (`--threshold`, the percentages, the budget, the gate): a finite
/// number (the server checks the range); NaN would travel as JSON `null` and silently mean
/// "the default".
pub fn parse_finite(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    if !value.is_finite() {
        return Err(format!("must be a finite number, got {text}"));
    }
    Ok(value)
}

/// Creates the migration `args` describe (or, with `--dry-run`, asks for its plan) and prints
/// the answer.
pub async fn migrate(server: &Server, args: &MigrateArgs) -> Result<Exit, CliError> {
    let answer: Value = server
        .post(&["v1", "migrations"], Some(&create_body(args)))
        .await?;
    if args.json {
        say(answer);
    } else if args.dry_run {
        print(&decode::<MigrationPlan>(server, answer)?.fields());
    } else {
        print(&decode::<Migration>(server, answer)?.fields());
    }
    Ok(Exit::Success)
}

/// The body of `POST /v1/migrations`: only what the flags set, so the server's defaults
/// apply to the rest.
fn create_body(args: &MigrateArgs) -> Value {
    let mut config = Map::new();
    let mut set = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            config.insert(name.to_owned(), value);
        }
    };
    set("batch_size", args.batch_size.map(Value::from));
    set("max_concurrent", args.max_concurrent.map(Value::from));
    set(
        "dual_write",
        args.no_dual_write.then_some(Value::Bool(false)),
    );
    set("target_query_threshold", args.threshold.map(Value::from));
    set(
        "rollback_window_secs",
        args.rollback_window_secs.map(Value::from),
    );
    set("shadow_percent", args.shadow_percent.map(Value::from));
    set("canary_percent", args.canary_percent.map(Value::from));
    set("cutover_gate", gate_body(args));
    set("max_cost", args.max_cost.map(Value::from));
    set(
        "retain_source_vectors",
        args.retain_source_vectors.then_some(Value::Bool(true)),
    );
    let mut body = json!({
        "target_model": args.target_model,
        "config": config,
        "start": !args.no_start,
    });
    if let Some(id) = &args.id {
        body["id"] = Value::from(id.as_str());
    }
    if args.dry_run {
        body["dry_run"] = Value::Bool(true);
    }
    body
}

/// The config's `cutover_gate` from the `--gate-*` flags given, if any; the server says
/// which combinations it takes.
fn gate_body(args: &MigrateArgs) -> Option<Value> {
    let mut gate = Map::new();
    let conditions = [
        ("min_samples", args.gate_min_samples.map(Value::from)),
        ("min_overlap", args.gate_min_overlap.map(Value::from)),
        (
            "min_recall_ratio",
            args.gate_min_recall_ratio.map(Value::from),
        ),
    ];
    for (name, value) in conditions {
        if let Some(value) = value {
            gate.insert(name.to_owned(), value);
        }
    }
    (!gate.is_empty()).then_some(Value::Object(gate))
}

/// Makes the lifecycle call `action` on the migration `args` names (the newest by default)
/// and prints the migration as it now is.
pub async fn act(server: &Server, args: &ActionArgs, action: Action<'_>) -> Result<Exit, CliError> {
    let id = named_or_newest(server, args.id.as_deref()).await?;
    let body = action.body();
    let segments = ["v1", "migrations", &id, action.call()];
    let answer: Value = server.post(&segments, body.as_ref()).await?;
    if args.json {
        say(answer);
    } else {
        print(&decode::<Migration>(server, answer)?.fields());
    }
    Ok(Exit::Success)
}

/// The id of the newest migration (`GET /v1/migrations` lists newest first), if any.
pub async fn newest(server: &Server) -> Result<Option<String>, CliError> {
    let list: MigrationList = server.get(&["v1", "migrations"]).await?;
    Ok(list.migrations.into_iter().next().map(|m| m.id))
}

/// The migration `id` names, or the newest one when it is absent; an error when there is
/// none.
pub async fn named_or_newest(server: &Server, id: Option<&str>) -> Result<String, CliError> {
    match id {
        Some(id) => Ok(id.to_owned()),
        None => newest(server).await?.ok_or(CliError::NoMigration),
    }
}

/// Decodes an answer already fetched as JSON into the shape the client prints.
pub fn decode<T: serde::de::DeserializeOwned>(
    server: &Server,
    answer: Value,
) -> Result<T, CliError> {
    serde_json::from_value(answer).map_err(|e| server.garbled(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::CommandLine;
    use crate::config::Command;

    fn migrate_args(argv: &[&str]) -> MigrateArgs {
        let argv = ["reembed", "migrate"].iter().chain(argv);
        match CommandLine::try_parse_from(argv).unwrap().command {
            Command::Client(super::super::ClientCommand::Migrate(args)) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn only_the_flags_given_reach_the_config() {
        let body = create_body(&migrate_args(&["--to", "hash-v2", "--no-start"]));
        assert_eq!(
            body,
            json!({"target_model": "hash-v2", "config": {}, "start": false})
        );
        let args = migrate_args(&[
            "--to",
            "hash-v2",
            "--id",
            "m1",
            "--batch-size",
            "10",
            "--max-concurrent",
            "2",
            "--no-dual-write",
            "--threshold",
            "0.5",
            "--rollback-window-secs",
            "0",
            "--dry-run",
        ]);
        let config = json!({"batch_size": 10, "max_concurrent": 2, "dual_write": false,
                            "target_query_threshold": 0.5, "rollback_window_secs": 0});
        assert_eq!(
            create_body(&args),
            json!({"id": "m1", "target_model": "hash-v2", "config": config, "start": true,
                   "dry_run": true})
        );
    }

    #[test]
    fn fractional_flags_must_be_finite() {
        assert_eq!(parse_finite("0.9"), Ok(0.9));
        assert!(parse_finite("NaN").is_err());
        assert!(parse_finite("inf").is_err());
        assert!(parse_finite("high").is_err());
    }

    #[test]
    fn the_confidence_flags_reach_the_config() {
        let args = migrate_args(&[
            "--to",
            "hash-v2",
            "--shadow-percent",
            "10",
            "--canary-percent",
            "2.5",
            "--gate-min-samples",
            "200",
            "--gate-min-overlap",
            "0.8",
            "--max-cost",
            "12.5",
            "--retain-source-vectors",
        ]);
        let config = json!({"shadow_percent": 10.0, "canary_percent": 2.5,
                            "cutover_gate": {"min_samples": 200, "min_overlap": 0.8},
                            "max_cost": 12.5, "retain_source_vectors": true});
        assert_eq!(create_body(&args)["config"], config);
        let recall = migrate_args(&["--to", "hash-v2", "--gate-min-recall-ratio", "0.95"]);
        assert_eq!(
            create_body(&recall)["config"],
            json!({"cutover_gate": {"min_recall_ratio": 0.95}})
        );
    }

    #[test]
    fn pause_with_a_reason_and_cutover_have_a_body() {
        let pause = Action::Pause {
            reason: Some("provider quota"),
        };
        assert_eq!(pause.body(), Some(json!({"reason": "provider quota"})));
        assert_eq!(Action::Pause { reason: None }.body(), None);
        assert_eq!(Action::Finalize.body(), None);
        assert_eq!(Action::Rollback.call(), "rollback");
        let cutover = Action::Cutover {
            reason: "recall checked by hand",
        };
        assert_eq!(cutover.call(), "cutover");
        assert_eq!(
            cutover.body(),
            Some(json!({"reason": "recall checked by hand"}))
        );
    }
}
