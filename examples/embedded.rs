//! A host program embedding daemon-lifecycle the documented way: the one
//! line `supervisor_init()` first in a plain `fn main()`, so this very binary
//! is re-executed as the fork backend's supervisor (no `daemonctl` needed).
//!
//! ```text
//! embedded BINARY PID_FILE [--init-inside-runtime]
//! ```
//!
//! Starts BINARY (argument `--tag embedded`) on the fork backend, prints
//! `started PID`, the supervisor's executable as `supervisor EXE`, then stops
//! it and prints `stopped`. With `--init-inside-runtime` it makes the classic
//! mistake (calling `supervisor_init()` inside a tokio runtime) to show the
//! error `start` reports.

use daemon_lifecycle::{BackendChoice, DaemonConfig, DaemonManager, DaemonStatus};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let inside = args.iter().any(|a| a == "--init-inside-runtime");
    if !inside {
        daemon_lifecycle::supervisor_init();
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async {
        if inside {
            daemon_lifecycle::supervisor_init();
        }
        let config = DaemonConfig::new(&args[1], &args[2]).with_args(["--tag", "embedded"]);
        let manager = DaemonManager::with_choice(config, BackendChoice::Fork);
        let pid = match manager.start().await {
            Ok(pid) => pid,
            Err(e) => {
                eprintln!("start: {e}");
                return 1;
            }
        };
        println!("started {pid}");
        let identity = std::fs::read_to_string(format!("{}.identity", args[2])).unwrap();
        let record: serde_json::Value = serde_json::from_str(&identity).unwrap();
        let sup = record["supervisor"]["pid"].as_u64().unwrap();
        let exe = std::fs::read_link(format!("/proc/{sup}/exe")).unwrap();
        println!("supervisor {}", exe.display());
        assert_eq!(manager.status().await.unwrap(), DaemonStatus::Running(pid));
        manager.stop().await.unwrap();
        println!("stopped");
        0
    });
    std::process::exit(code);
}
