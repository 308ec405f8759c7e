//! The benchmark suite (`reembed-bench`, `bench/run.sh`) must keep running: its smoke mode
//! runs every benchmark at tiny sizes in seconds. No timing is asserted.

use std::process::Command;

#[test]
fn the_benchmarks_run_in_smoke_mode() {
    let output = Command::new(env!("CARGO_BIN_EXE_reembed-bench"))
        .arg("--smoke")
        .output()
        .expect("reembed-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "reembed-bench --smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for section in [
        "## Query",
        "## Routing throughput",
        "## Backfill overhead",
        "## Writes",
        "## Live traffic during a backfill",
        "## Scaling",
        "## Memory",
    ] {
        assert!(stdout.contains(section), "no {section} in:\n{stdout}");
    }
}
