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
        for sub in ["start", "status", "wait-ready", "render", "man"] {
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
    for sub in ["start", "stop", "status", "render", "completions"] {
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
