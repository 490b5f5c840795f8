//! Input: hostile argv and environment arrive byte for byte; newlines where
//! a backend cannot carry them; invalid configs are refused with a typed
//! error naming the field and create nothing (no process, unit, unit file
//! or file).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use daemon_lifecycle::{DaemonConfig, DaemonError};

use super::harness::{poll, Ctx};
use crate::support::within;

/// Arguments and values that break naive command-line and unit-file writers.
const HOSTILE: &[&str] = &[
    "plain",
    "two words",
    "",
    "\"double\" 'single'",
    "'",
    "\"",
    "100% %n %h %%",
    "$HOME ${HOME} $$ $1",
    ";",
    "a;b",
    "a ; b",
    "back\\slash \\n not a newline",
    "\\",
    "trailing backslash\\",
    "{}{{}}",
    "unicodé 日本 🦀",
    "tab\there",
    "-dash",
    "--",
    "  leading and trailing  ",
    "=equals=",
    "#hash ;semicolon",
    "`backticks` $(subshell) | > < &",
];

/// What the daemon saw, from its `--dump`.
async fn dump(path: &str) -> Option<serde_json::Value> {
    let text = poll(10, || async { std::fs::read_to_string(path).ok() }).await?;
    serde_json::from_str(&text).ok()
}

/// Starts `config`, checks its argv and `HOSTILE_*`/`NL` environment against
/// the dump (each as one check named after `what`), stops it.
async fn round_trip(ctx: &Ctx, what: &str, config: &DaemonConfig, dump_path: &str) {
    let started = async {
        let m = ctx.try_manager(config).await?;
        let pid = within(30, m.start()).await?;
        Ok::<_, DaemonError>((m, pid))
    }
    .await;
    if !ctx.check_outcome(&format!("{what}: start"), &started, "ok") {
        return;
    }
    let (m, _) = started.unwrap();
    let Some(dumped) = dump(dump_path).await else {
        ctx.fail(format!("{what}: no dump at {dump_path}"));
        return;
    };
    let argv: Vec<String> = serde_json::from_value(dumped["argv"].clone()).unwrap();
    ctx.check(
        &format!("{what}: argv"),
        format!("{:?}", &argv[1..]),
        format!("{:?}", config.args),
    );
    let env: BTreeMap<String, String> = serde_json::from_value(dumped["env"].clone()).unwrap();
    let ours = |e: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        e.iter()
            .filter(|(k, _)| k.starts_with("HOSTILE_") || k.as_str() == "NL")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let want: BTreeMap<String, String> = config.env.clone().into_iter().collect();
    ctx.check(
        &format!("{what}: env"),
        format!("{:?}", ours(&env)),
        format!("{:?}", ours(&want)),
    );
    if let Some(dir) = &config.working_dir {
        ctx.check(
            &format!("{what}: cwd"),
            &dumped["cwd"],
            serde_json::json!(dir),
        );
    }
    ctx.check_outcome(&format!("{what}: stop"), &within(30, m.stop()).await, "ok");
    let _ = std::fs::remove_file(dump_path);
}

scenario!(argv_and_env_arrive_byte_for_byte, exclusive, |ctx| {
    let dump = ctx.out("dump.json");
    let mut config = ctx
        .config(&["--dump", &dump, "--"])
        .with_working_dir(ctx.dir().join("out"));
    config.args.extend(HOSTILE.iter().map(|s| s.to_string()));
    for (i, value) in HOSTILE.iter().enumerate() {
        config.env.insert(format!("HOSTILE_{i}"), value.to_string());
    }
    round_trip(&ctx, "hostile", &config, &dump).await;
});

scenario!(newlines_in_argv_and_env, |ctx| {
    let dump = ctx.out("dump.json");
    let mut config = ctx.config(&["--dump", &dump, "--", "two\nlines", "cr\rhere"]);
    round_trip(&ctx, "newline in an argument", &config, &dump).await;
    config = ctx.config(&["--dump", &dump]).with_env("NL", "two\nlines");
    round_trip(&ctx, "newline in an environment value", &config, &dump).await;
});

scenario!(invalid_config_changes_nothing, |ctx| {
    let tag = ctx.tag().to_owned();
    let plain = ctx.out("plain-file");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with = |f: &dyn Fn(&mut DaemonConfig)| {
        let mut c = ctx.config(&[]);
        f(&mut c);
        c
    };
    // (what, config, the error for every operation or only for start)
    let refused: Vec<(&str, DaemonConfig, &str)> = vec![
        (
            "newline in the name",
            with(&|c| c.name = Some(format!("{tag}\nx"))),
            "InvalidConfig(name)",
        ),
        (
            "path in the name",
            with(&|c| c.name = Some(format!("{tag}/../x"))),
            "InvalidConfig(name)",
        ),
        (
            "bad env key",
            with(&|c| {
                c.env.insert("BAD-KEY".into(), "v".into());
            }),
            "InvalidConfig(env.BAD-KEY)",
        ),
        (
            "NUL in an env value",
            with(&|c| {
                c.env.insert("OK".into(), "nul\0inside".into());
            }),
            "InvalidConfig(env.OK)",
        ),
        (
            "NUL in an argument",
            with(&|c| c.args.push("arg\0nul".into())),
            "InvalidConfig(args[2])",
        ),
        (
            "relative working_dir",
            with(&|c| c.working_dir = Some("relative/dir".into())),
            "InvalidConfig(working_dir)",
        ),
        (
            "zero startup timeout",
            with(&|c| c.startup_timeout_secs = 0),
            "InvalidConfig(startup_timeout_secs)",
        ),
        (
            "relative pid_file",
            with(&|c| c.pid_file = "relative.pid".into()),
            "InvalidConfig(pid_file)",
        ),
        (
            "relative binary_path",
            with(&|c| c.binary_path = "testd".into()),
            "InvalidConfig(binary_path)",
        ),
        (
            "bad readiness address",
            with(&|c| {
                c.readiness = Some(daemon_lifecycle::Readiness::Tcp {
                    address: "nowhere".into(),
                    interval_ms: None,
                })
            }),
            "InvalidConfig(readiness.address)",
        ),
        (
            "max_delay_ms below delay_ms",
            with(&|c| {
                c.restart.delay_ms = 500;
                c.restart.max_delay_ms = 100;
            }),
            "InvalidConfig(restart.max_delay_ms)",
        ),
    ];
    for (what, config, want) in &refused {
        if matches!(
            ctx.target(),
            super::harness::Target::UserUnit | super::harness::Target::SystemUnit
        ) {
            ctx.check_outcome(
                &format!("{what}: install"),
                &ctx.install(config).await,
                want,
            );
        }
        let m = ctx.manager_without_install(config).await;
        ctx.check_outcome(
            &format!("{what}: start"),
            &within(30, m.start()).await,
            want,
        );
        check_other_operations(&ctx, what, &m, want, want).await;
    }
    // What the host must offer (a binary that is there and executable, a
    // working directory that exists) is a host check: start and restart
    // refuse it, typed; status, stop, kill and cleanup need none (a daemon
    // whose binary an upgrade removed can still be stopped).
    let host: Vec<(&str, DaemonConfig, &str)> = vec![
        (
            "missing working_dir",
            with(&|c| c.working_dir = Some("/no/such/dir/dl9".into())),
            "InvalidConfig(working_dir)",
        ),
        (
            "missing binary",
            with(&|c| c.binary_path = ctx.dir().join("no-such-daemon")),
            "BinaryNotFound",
        ),
        (
            "binary not executable",
            with(&|c| c.binary_path = plain.clone().into()),
            "BinaryNotExecutable",
        ),
    ];
    for (what, config, want) in &host {
        let started = async {
            let m = ctx.try_manager(config).await?;
            within(30, m.start()).await
        }
        .await;
        ctx.check_outcome(&format!("{what}: start"), &started, want);
        if want.starts_with("Binary") {
            let file_name = config.binary_path.file_name().unwrap().to_string_lossy();
            ctx.check(
                &format!("{what}: the error names the binary"),
                started
                    .as_ref()
                    .err()
                    .is_some_and(|e| e.to_string().contains(&*file_name)),
                true,
            );
        }
        let m = ctx.manager_without_install(config).await;
        check_other_operations(&ctx, what, &m, want, "ok").await;
    }
    // Nothing was created: no process, unit, unit file, or file beside the
    // PID file (checked before the teardown, which would remove them).
    ctx.check_nothing_created().await;
});

/// Every operation but start on `m`: `restart` must end as `restarts`
/// says, `status`, `stop`, `kill` and `cleanup` as `others` says.
async fn check_other_operations(
    ctx: &Ctx,
    what: &str,
    m: &daemon_lifecycle::DaemonManager,
    restarts: &str,
    others: &str,
) {
    let check = |op: &str| format!("{what}: {op}");
    ctx.check_outcome(&check("restart"), &within(30, m.restart()).await, restarts);
    ctx.check_outcome(&check("status"), &within(30, m.status()).await, others);
    ctx.check_outcome(&check("stop"), &within(30, m.stop()).await, others);
    ctx.check_outcome(&check("kill"), &within(30, m.kill()).await, others);
    ctx.check_outcome(
        &check("cleanup"),
        &within(30, m.cleanup_stale()).await,
        others,
    );
}
