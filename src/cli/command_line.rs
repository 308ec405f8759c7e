//! The whole `reembed` command line: [`Cli`] (the `serve` flags and the subcommands) with the
//! client's [`Remote`] options added as clap *global* options, so `--url` and `--api-token` go
//! before or after the client subcommand: `reembed --url URL status` and
//! `reembed status --url URL` are the same command.
//!
//! `Cli` sets `args_conflicts_with_subcommands`, so that `serve`'s flags given without a
//! subcommand (`reembed --listen ...`) cannot be followed by another subcommand. But clap counts
//! a global option before the subcommand as such a flag and then refuses the subcommand, so the
//! setting is turned off here and [`check_placement`] refuses what it refused. It also refuses
//! `--url` and `--api-token` with `serve` and `openapi`, which would ignore them.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, CommandFactory, FromArgMatches};

use super::Remote;
use crate::config::{Cli, Command};

/// A parsed command line: what to run, and where the client subcommands find the service.
#[derive(Debug)]
pub struct CommandLine {
    pub command: Command,
    /// Given by a client subcommand's `--url` and `--api-token` (or their environment
    /// variables); unused by `serve` and `openapi`.
    pub remote: Remote,
}

impl CommandLine {
    /// Parses the process's arguments; on a usage error prints it and exits 2 (`--help` and
    /// `--version` print and exit 0).
    pub fn parse() -> Self {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `argv`, the program name first.
    pub fn try_parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(argv)?;
        let remote = Remote::from_arg_matches(&matches)?;
        let cli = Cli::from_arg_matches(&matches)?.command();
        check_placement(&mut command, &matches, &cli)?;
        Ok(Self {
            command: cli,
            remote,
        })
    }

    /// The clap command: `Cli`'s, with the `Remote` options global.
    pub fn command() -> clap::Command {
        // Taken from a scratch command, so `Remote`'s doc comment does not become the about.
        let remote: Vec<Arg> = Remote::augment_args(clap::Command::new("remote"))
            .get_arguments()
            .cloned()
            .collect();
        // `serve` and `openapi` get hidden copies, so their `--help` does not offer them; the
        // copies' values still reach `Remote` (clap matches globals by id), and
        // `check_placement` refuses them.
        let hidden: Vec<Arg> = remote
            .iter()
            .map(|a| a.clone().global(false).hide(true))
            .collect();
        <Cli as CommandFactory>::command()
            .args(remote)
            .args_conflicts_with_subcommands(false)
            // The two forms clap writes under `args_conflicts_with_subcommands` (which
            // `check_placement` still enforces), and that client options may come first.
            .override_usage("reembed [OPTIONS]\n       reembed [CLIENT OPTIONS] <COMMAND>")
            .mut_subcommand("serve", |serve| serve.args(hidden.clone()))
            .mut_subcommand("openapi", |openapi| openapi.args(hidden))
    }
}

/// Refuses `serve` flags given before a subcommand, and `--url` or `--api-token` with a command
/// that is not a client subcommand.
fn check_placement(
    command: &mut clap::Command,
    matches: &ArgMatches,
    cli: &Command,
) -> Result<(), clap::Error> {
    let serve_flag = given_flag(command, matches, false);
    if let (Some(subcommand), Some(flag)) = (matches.subcommand_name(), serve_flag) {
        let message =
            format!("{flag} is a flag of `reembed serve` and cannot be used with `{subcommand}`");
        return Err(command.error(ErrorKind::ArgumentConflict, message));
    }
    let client_option = given_flag(command, matches, true);
    if let (false, Some(option)) = (matches!(cli, Command::Client(_)), client_option) {
        let message = format!(
            "{option} is an option of the client subcommands (import, migrate, status, ...); \
             `serve` takes --listen, and its API token from REEMBED_API_TOKEN or --api-token-file"
        );
        return Err(command.error(ErrorKind::ArgumentConflict, message));
    }
    Ok(())
}

/// The long name of the first top-level option (`global`: one of `Remote`'s) given on the
/// command line.
fn given_flag(command: &clap::Command, matches: &ArgMatches, global: bool) -> Option<String> {
    command
        .get_arguments()
        .filter(|arg| arg.is_global_set() == global)
        .find(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => arg.get_id().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<CommandLine, clap::Error> {
        CommandLine::try_parse_from(["reembed"].iter().chain(argv))
    }

    fn status_remote(argv: &[&str]) -> Remote {
        match parse(argv).unwrap() {
            CommandLine {
                command: Command::Client(super::super::ClientCommand::Status(_)),
                remote,
            } => remote,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        CommandLine::command().debug_assert();
    }

    #[test]
    fn client_options_go_before_or_after_the_subcommand() {
        let url = "http://h:1/";
        for argv in [
            ["--url", url, "--api-token", "t", "status"],
            ["status", "--url", url, "--api-token", "t"],
            ["--url", url, "status", "--api-token", "t"],
        ] {
            let remote = status_remote(&argv);
            assert_eq!(remote.url.as_str(), url, "{argv:?}");
            assert_eq!(remote.api_token.as_deref(), Some("t"), "{argv:?}");
        }
    }

    #[test]
    fn no_subcommand_serves_with_the_flags_given() {
        let Command::Serve(args) = parse(&["--listen", "127.0.0.1:0"]).unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(args.listen.port(), 0);
        assert!(matches!(parse(&[]).unwrap().command, Command::Serve(_)));
    }

    #[test]
    fn misplaced_flags_are_usage_errors() {
        for argv in [
            &["--listen", "127.0.0.1:0", "status"][..],
            &["--data-dir", "d", "serve"],
            &["--url", "http://h:1", "serve"],
            &["serve", "--url", "http://h:1"],
            &["--api-token", "t"],
            &["openapi", "--url", "http://h:1"],
        ] {
            let error = parse(argv)
                .err()
                .unwrap_or_else(|| panic!("{argv:?} parsed"));
            assert_eq!(
                error.kind(),
                ErrorKind::ArgumentConflict,
                "{argv:?}: {error}"
            );
        }
    }
}
