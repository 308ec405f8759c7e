//! Progress bars for the terminal only: drawn on stderr when it is a terminal, hidden
//! otherwise, so pipes, logs and tests see only the plain output on stdout.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps (a spinner when `len` is unknown) drawn with `template`, or a hidden
/// bar when stderr is not a terminal.
pub fn on_terminal(len: Option<u64>, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.with_style(style)
}
