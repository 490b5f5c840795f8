//! `daemonctl`'s self-description: shell completions, the man page and
//! `--help` text.
mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn daemonctl(args: &[&str]) -> Output {
    Command::new(support::daemonctl())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs `shell -n` (parse, do not execute) on `script`.
fn syntax_check(shell: &str, script: &str) -> Option<Output> {
    let mut child = match Command::new(shell)
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("run {shell}: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

#[test]
fn completions_for_every_shell_and_they_parse() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&daemonctl(&["completions", shell]));
        // Every subcommand is completed.
        for sub in [
            "start",
            "status",
            "wait-ready",
            "render",
            "list",
            "logs",
            "man",
        ] {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
        // bash is required everywhere; zsh and fish where installed (CI
        // installs them: .ci/run).
        let required = shell == "bash" || std::env::var_os("CI").is_some();
        if !matches!(shell, "bash" | "zsh" | "fish") {
            continue;
        }
        match syntax_check(shell, &script) {
            Some(out) => assert!(
                out.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            None if required => panic!("{shell} is not installed"),
            None => eprintln!("SKIPPED: {shell} -n ({shell} is not installed)"),
        }
    }
    // A shell we do not know is a usage error naming the choices.
    let out = daemonctl(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn bash_completion_offers_subcommands_and_values() {
    // Load the script and ask it, as bash would on TAB.
    let script = stdout(&daemonctl(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemonctl.bash");
    std::fs::write(&file, script).unwrap();
    // `_daemonctl CMD CUR PREV` with COMP_WORDS/COMP_CWORD set, as bash calls it.
    let ask = |words: &[&str]| {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cur = words[words.len() - 1];
        let prev = words[words.len() - 2];
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({}); COMP_CWORD={}; _daemonctl daemonctl '{cur}' '{prev}'; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display(),
                quoted.join(" "),
                words.len() - 1
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let subs = ask(&["daemonctl", "st"]);
    assert!(subs.lines().any(|l| l == "start"), "{subs}");
    assert!(subs.lines().any(|l| l == "status"), "{subs}");
    let backends = ask(&["daemonctl", "--backend", ""]);
    for b in ["auto", "fork", "systemd"] {
        assert!(backends.lines().any(|l| l == b), "{backends}");
    }
}

#[test]
fn man_page_is_roff_and_names_every_command() {
    let page = stdout(&daemonctl(&["man"]));
    assert!(page.contains(".TH daemonctl 1"), "{page}");
    assert!(page.contains(".SH SYNOPSIS") && page.contains(".SH OPTIONS"));
    for sub in [
        "start",
        "stop",
        "status",
        "render",
        "list",
        "logs",
        "completions",
    ] {
        assert!(page.contains(sub), "no {sub} in the man page");
    }
    // And man(1) itself can format it, where installed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemonctl.1");
    std::fs::write(&file, &page).unwrap();
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("daemonctl"), "{text}");
        }
    }
}

/// Every subcommand daemonctl has (`help` aside).
fn subcommands() -> Vec<String> {
    let help = stdout(&daemonctl(&["--help"]));
    let mut in_commands = false;
    let mut subs = Vec::new();
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            match line.split_whitespace().next() {
                Some("help") => {}
                Some(name) if line.starts_with("  ") => subs.push(name.to_owned()),
                _ => break,
            }
        }
    }
    assert!(subs.len() >= 12, "{help}");
    subs
}

/// The argument and option lines of a `-h` text (`  <CONFIG>  The ...`,
/// `      --json  Print ...`), each with what follows the name.
fn entries(help: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in help.lines() {
        if line == "Arguments:" || line == "Options:" {
            in_section = true;
            continue;
        }
        if line.is_empty() {
            in_section = false;
            continue;
        }
        if in_section {
            let trimmed = line.trim_start();
            // The name ends at the first run of two spaces.
            let (name, rest) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
            out.push((name.to_owned(), rest.trim().to_owned()));
        }
    }
    out
}

#[test]
fn every_argument_and_option_has_a_one_line_help() {
    for sub in subcommands() {
        let help = stdout(&daemonctl(&[&sub, "-h"]));
        let entries = entries(&help);
        assert!(!entries.is_empty(), "{sub}: {help}");
        for (name, text) in &entries {
            assert!(!text.is_empty(), "{sub}: {name} has no help:\n{help}");
        }
        if help.contains("<CONFIG>") {
            assert!(
                entries
                    .iter()
                    .any(|(n, t)| n == "<CONFIG>" && t.contains("config file")),
                "{sub}: {help}"
            );
        }
        // A description of more than its summary line ends in a whole
        // sentence (clap drops the period of a one-line summary only).
        let long = stdout(&daemonctl(&[&sub, "--help"]));
        let about = long.split("\n\nUsage:").next().unwrap().trim_end();
        assert!(!about.ends_with("'s"), "{sub}: reads cut off: {about:?}");
        if about.contains("\n\n") {
            assert!(about.ends_with('.'), "{sub}: reads cut off: {about:?}");
        }
    }
}

#[test]
fn run_help_reads_complete() {
    let help = stdout(&daemonctl(&["run", "--help"]));
    let about = help.split("\n\nUsage:").next().unwrap();
    assert!(about.contains("container entrypoint"), "{about}");
    assert!(about.contains("128 + the signal number"), "{about}");
    assert!(about.trim_end().ends_with('.'), "{about}");
}

#[test]
fn backend_is_offered_only_where_it_means_something() {
    for sub in ["render", "completions", "man"] {
        let help = stdout(&daemonctl(&[sub, "--help"]));
        assert!(
            !help.contains("--backend"),
            "{sub} offers --backend:\n{help}"
        );
        assert!(!help.contains("--adopt"), "{sub} offers --adopt:\n{help}");
    }
    for sub in ["start", "stop", "status", "logs", "list"] {
        let Ok(help) = String::from_utf8(daemonctl(&[sub, "--help"]).stdout) else {
            continue;
        };
        if !help.is_empty() {
            assert!(help.contains("--backend"), "{sub}:\n{help}");
        }
    }
    // Still accepted where it is ignored: scripts that pass it everywhere work.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("d.toml");
    std::fs::write(
        &toml,
        "name = \"d\"\nbinary_path = \"/usr/bin/not-installed\"\npid_file = \"/tmp/d.pid\"\n",
    )
    .unwrap();
    let out = Command::new(support::daemonctl())
        .args(["--backend", "fork", "--scope", "user", "render"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("[Service]"));
    let out = Command::new(support::daemonctl())
        .args(["render", "--backend", "fork"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("[Service]"));
}
