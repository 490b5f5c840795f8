//! `packaging/` (issue 11): the configs of the seed's chain and the units
//! rendered from them, committed. A unit out of date with its config or
//! with the renderer fails here; every unit passes `systemd-analyze verify`
//! with nothing on stderr, in a root where the binaries are stubs.
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIGS: [&str; 4] = [
    "packaging/queen-rbee.toml",
    "packaging/rbee-hive.toml",
    "packaging/llm-worker-rbee.toml",
    "packaging/demo/daemon-lifecycle-demo.toml",
];

/// Every file under `root`, by path relative to it, with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What is rendered for launchd, which has no templates: the worker as
/// one instance.
const LAUNCHD: [(&str, Option<&str>); 4] = [
    ("packaging/queen-rbee.toml", None),
    ("packaging/rbee-hive.toml", None),
    ("packaging/llm-worker-rbee.toml", Some("gpu0")),
    ("packaging/demo/daemon-lifecycle-demo.toml", None),
];

/// Renders every config into a fresh DESTDIR the way a package build does
/// (from the crate root, so the header names `packaging/NAME.toml`).
fn render_all(destdir: &Path) -> Vec<PathBuf> {
    let jobs = CONFIGS.iter().map(|c| ("systemd", *c, None));
    render(destdir, jobs)
}

fn render_all_launchd(destdir: &Path) -> Vec<PathBuf> {
    render(destdir, LAUNCHD.iter().map(|(c, i)| ("launchd", *c, *i)))
}

fn render<'a>(
    destdir: &Path,
    jobs: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> Vec<PathBuf> {
    let mut written = Vec::new();
    for (format, config, instance) in jobs {
        let out = Command::new(support::daemonctl())
            .args(instance.map(|i| ["--instance", i]).into_iter().flatten())
            .args(["render", "--format", format, "--out"])
            .arg(destdir)
            .arg(config)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One line per file written: its path.
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            written.push(PathBuf::from(line));
        }
    }
    written
}

#[test]
fn committed_units_are_what_the_configs_render() {
    let dir = tempfile::tempdir().unwrap();
    let written = render_all(dir.path());
    assert_eq!(written.len(), CONFIGS.len());
    for path in &written {
        assert!(
            path.starts_with(dir.path()) && path.exists(),
            "{}",
            path.display()
        );
    }
    let committed = tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd"));
    let rendered = tree(dir.path());
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>(),
        "packaging/systemd holds other files than the configs render"
    );
    for (path, bytes) in &rendered {
        assert!(
            committed[path] == *bytes,
            "packaging/systemd/{} is out of date: run\n  for c in packaging/*.toml; do daemonctl render --out packaging/systemd $c; done",
            path.display()
        );
    }
    // The layout a package installs, and the template's name.
    assert!(rendered.contains_key(Path::new("usr/lib/systemd/system/queen-rbee.service")));
    assert!(rendered.contains_key(Path::new("usr/lib/systemd/system/llm-worker-rbee@.service")));
    // Rendering twice gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    render_all(again.path());
    assert_eq!(tree(again.path()), rendered);
}

#[test]
fn committed_plists_are_what_the_configs_render_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let written = render_all_launchd(dir.path());
    assert_eq!(written.len(), LAUNCHD.len());
    let committed = tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/launchd"));
    let rendered = tree(dir.path());
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>(),
        "packaging/launchd holds other files than the configs render"
    );
    for (path, bytes) in &rendered {
        assert!(
            committed[path] == *bytes,
            "packaging/launchd/{} is out of date: run daemonctl render --format launchd --out packaging/launchd CONFIG",
            path.display()
        );
        assert!(
            path.starts_with("Library/LaunchDaemons"),
            "{}",
            path.display()
        );
        // Both parsers read the same program and arguments.
        let file = dir.path().join(path);
        let value = plist::Value::from_file(&file).unwrap();
        let argv: Vec<String> = value.as_dictionary().unwrap()["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_string().unwrap().to_owned())
            .collect();
        let out = Command::new("python3")
            .args([
                "-c",
                "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))['ProgramArguments']))",
            ])
            .arg(&file)
            .output()
            .expect("python3 is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let py: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(py, argv, "{}", path.display());
    }
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let root = tempfile::tempdir().unwrap();
    render_all(root.path());
    // The manager's own units (sysinit.target, ...) that verify loads, and
    // stub binaries where the units run them: the packaged binaries are not
    // installed on the test machine, and the check must not be weakened.
    let units = root.path().join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let to = units.join(entry.file_name());
        if !to.exists() && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/rbee")).unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    // The packaged binaries, and the host's tools the units' ExecReload=
    // lines run (every systemd host has them).
    for bin in [
        "usr/bin/queen-rbee",
        "usr/bin/rbee-hive",
        "usr/bin/llm-worker-rbee",
        "usr/bin/daemon-lifecycle-demo",
        "bin/kill",
        "usr/bin/systemd-notify",
    ] {
        let stub = root.path().join(bin);
        std::fs::write(&stub, "#!/bin/sh\n").unwrap();
        let mut perms = std::fs::metadata(&stub).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&stub, perms).unwrap();
    }
    for unit in [
        "queen-rbee.service",
        "rbee-hive.service",
        "llm-worker-rbee@.service",
        "llm-worker-rbee@gpu0.service",
    ] {
        let arg = if unit.ends_with("@.service") || !unit.contains('@') {
            units.join(unit).display().to_string()
        } else {
            unit.to_owned()
        };
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.path().display()))
            .arg(&arg)
            .output()
            .expect("systemd-analyze (package systemd) is installed");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The check is real: without the binary it complains.
    std::fs::remove_file(root.path().join("usr/bin/queen-rbee")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg(units.join("queen-rbee.service"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/bin/queen-rbee"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
