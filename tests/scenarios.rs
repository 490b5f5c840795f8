//! One scenario suite, every backend (issue 9). Each lifecycle scenario is
//! written once (`tests/scenarios/*.rs`) and runs on every backend of the
//! test run at once: the fork backend, a transient unit and an installed
//! unit file on a private `systemd --user`, the same two on a private
//! system-mode systemd, and an agent on the launchctl simulator (one per
//! run, `tests/support/launchd.rs`). The two managers are started once per test process
//! and shared; every run has its own sandbox and daemon name, a deadline,
//! and a teardown that checks no process, unit or file is left.
//!
//! Every backend must say the same words (`DaemonStatus::state_name`, the
//! failure's reason, `ExitInfo`'s Display, error variants). Where one does
//! not, `scenarios/gaps.rs` says so in one table (`KNOWN_GAPS`), which the
//! checks consult and README.md shows.
mod support;

mod scenarios {
    #[macro_use]
    mod macros {
        /// `scenario!(name, |ctx| { ... })`: a test named `name` that runs
        /// the body on every target (the scenario's name is the test's);
        /// `scenario!(name, exclusive, |ctx| ...)` has the managers to itself
        /// (`Sharing::Exclusive`).
        macro_rules! scenario {
            ($name:ident, |$ctx:ident| $body:block) => {
                scenario!(@ $name, Shared, |$ctx| $body);
            };
            ($name:ident, exclusive, |$ctx:ident| $body:block) => {
                scenario!(@ $name, Exclusive, |$ctx| $body);
            };
            (@ $name:ident, $sharing:ident, |$ctx:ident| $body:block) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::scenarios::harness::run(
                        stringify!($name),
                        $crate::scenarios::harness::Sharing::$sharing,
                        |$ctx| async move $body,
                    )
                    .await;
                }
            };
        }
    }

    pub mod gaps;
    pub mod harness;

    mod concurrency;
    mod exits;
    mod health;
    mod input;
    mod lifecycle;
    mod readiness;
    mod shutdown;
}

use scenarios::gaps::{not_run_row, readme_row, KNOWN_GAPS, NOT_RUN};

/// README.md's "Where backends differ" table is KNOWN_GAPS, row for row.
#[test]
fn readme_lists_every_known_gap() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Where backends differ\n")
        .nth(1)
        .expect("README.md has a section \"## Where backends differ\"");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    let want: Vec<String> = KNOWN_GAPS
        .iter()
        .map(readme_row)
        .chain(NOT_RUN.iter().map(not_run_row))
        .collect();
    assert_eq!(
        rows, want,
        "README.md's table differs from KNOWN_GAPS (tests/scenarios/gaps.rs); its rows should be:\n{}",
        want.join("\n")
    );
}

/// Every KNOWN_GAPS row names a scenario of this suite (a row for a
/// scenario that is gone would never be consulted).
#[test]
fn every_known_gap_names_a_scenario() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--list", "--format", "terse"])
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let tests: Vec<&str> = list
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    for gap in KNOWN_GAPS {
        assert!(
            tests
                .iter()
                .any(|t| t.ends_with(&format!("::{}", gap.scenario))),
            "KNOWN_GAPS names {:?}, which is no scenario here: {tests:?}",
            gap.scenario
        );
        assert!(
            !gap.on.is_empty(),
            "{}: a row without targets",
            gap.scenario
        );
    }
    for not_run in NOT_RUN {
        assert!(
            tests
                .iter()
                .any(|t| t.ends_with(&format!("::{}", not_run.scenario))),
            "NOT_RUN names {:?}, which is no scenario here",
            not_run.scenario
        );
    }
}
