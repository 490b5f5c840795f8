#!/usr/bin/env bash
# The main job, end to end: build daemonctl and the demo daemon, then start,
# check and stop the daemon through daemonctl on the embedded fork backend.
# Leaves nothing running and nothing on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo's own progress, so a first build (about a minute) is not a silent wait.
echo "--- building daemonctl and the demo daemon (examples/testd.rs)"
cargo build --bin daemonctl --example testd
daemonctl="$PWD/target/debug/daemonctl"
work=$(mktemp -d "${TMPDIR:-/tmp}/daemonctl-demo.XXXXXX")
cleanup() {
    "$daemonctl" --backend fork stop "$work/demo.toml" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
# The fork backend's registry of started daemons (what `daemonctl list`
# shows with no argument) lives in the XDG state directory: here, the demo's.
export XDG_STATE_HOME="$work/state"

cat >"$work/demo.toml" <<EOF
name = "demo"
binary_path = "$PWD/target/debug/examples/testd"
args = ["--heartbeat", "$work/heartbeat.log", "--print-env", "DEMO_GREETING", "--ready-after", "1000"]
pid_file = "$work/demo.pid"
shutdown_timeout_secs = 5
# start returns once the daemon sent READY=1 (sd_notify), here after 1 s
readiness = { kind = "notify" }
[env]
DEMO_GREETING = "hello from daemonctl"
[logs]
stdout = "$work/demo.log"
EOF

run() { echo "\$ daemonctl $*"; "$daemonctl" "$@"; }

echo "--- config: $work/demo.toml"
cat "$work/demo.toml"
echo "---"
run --backend fork start "$work/demo.toml"
run --backend fork status "$work/demo.toml"
run --backend fork status --json "$work/demo.toml"
sleep 1
echo "--- the daemon's heartbeat file:"
cat "$work/heartbeat.log"
run --backend fork list
echo "--- its stdout (logs.stdout): the config's env reached it"
run --backend fork logs "$work/demo.toml"
"$daemonctl" --backend fork logs "$work/demo.toml" | grep -q '^DEMO_GREETING=hello from daemonctl$'
echo "---"
run --backend fork stop "$work/demo.toml"
set +e
run --backend fork status "$work/demo.toml"
code=$?
set -e
echo "(status exit code $code: 3 means stopped)"
[ "$code" = 3 ]
echo "demo OK: started, reported running with its PID, listed, showed its log, stopped."
