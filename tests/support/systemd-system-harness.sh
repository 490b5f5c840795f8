#!/bin/bash
# Test support of daemon-lifecycle: a real systemd in SYSTEM mode as PID 1 of its
# own namespaces, for the system-scope tests (tests/support/systemd.rs drives it).
# Adapted from the project's shared harness; state lives under $SYSH_BASE
# (the tests give each instance a temp dir), so nothing is left in /tmp.
#
# systemd-system-harness: a real systemd 252 in SYSTEM mode, as PID 1
# of its own PID/mount/UTS/IPC/net/cgroup namespaces, for integration tests
# that drive systemd over the system bus and write /etc/systemd/system.
#
#   harness start NAME         boot it; prints the bus addresses when running
#   harness exec  NAME -- CMD  run CMD inside (private /etc/systemd, /run,
#                              default system bus = the namespaced one)
#   harness env   NAME         print DBUS_SYSTEM_BUS_ADDRESS etc. for host clients
#   harness stop  NAME         poweroff, then SIGKILL the namespace; clean up
#   harness status NAME
#   harness selftest NAME      host-side busctl checks (transient unit, Reload,
#                              persistent unit with User=nobody)
#
# Must run as real root on a host whose PID 1 is NOT systemd (or is; the
# namespace is isolated either way).  Nothing is mounted in the host mount
# namespace.  State lives in $SYSH_BASE/NAME (default /tmp/sysharness/NAME):
#   run/              bound over /run inside  (host sees sockets here)
#   etc-systemd/      bound over /etc/systemd (system/ = persistent units)
#   vendor/           bound over /usr/lib/systemd/system (minimal base units)
#   var-lib-systemd/  bound over /var/lib/systemd
#   console.log       /dev/console of the namespace (systemd's own log)
# Env: SYSH_BASE, SYSH_TIMEOUT (boot wait, s, default 30), SYSH_KEEP=1 (keep
# state dir on stop), SYSH_STOP_TIMEOUT (graceful poweroff wait, s, default 15),
# SYSH_LOG_LEVEL (default info), SYSH_USERNS (default 1: run inside a user
# namespace with an identity uid/gid map; 0: real host root capabilities --
# units can then change host-global state, e.g. `date -s` sets the host clock).
set -euo pipefail

BASE=${SYSH_BASE:-/tmp/sysharness}
CGROOT=/sys/fs/cgroup/unified          # host cgroup2 (hybrid layout)
[ -e "$CGROOT/cgroup.procs" ] || CGROOT=/sys/fs/cgroup   # pure v2 host
SYSTEMD=/lib/systemd/systemd

die() { echo "harness: $*" >&2; exit 1; }
usage() { sed -n '2,25p' "$0" >&2; exit 2; }

[ $# -ge 2 ] || usage
CMD=$1 NAME=$2; shift 2
case "$NAME" in *[!A-Za-z0-9_.-]*|''|.*) die "bad name '$NAME'";; esac
S=$BASE/$NAME
CG=$CGROOT/sysharness.$NAME
USERNS=${SYSH_USERNS:-1}

# Host PID of the namespace's PID 1 (systemd), verified to be in another PID ns.
ns_init_pid() {
    local upid kid
    upid=$(cat "$S/unshare.pid" 2>/dev/null) || return 1
    [ -d "/proc/$upid" ] || return 1
    kid=$(cat "/proc/$upid/task/$upid/children" 2>/dev/null | awk '{print $1}')
    [ -n "$kid" ] && [ "$kid" != 1 ] || return 1
    [ "$(readlink "/proc/$kid/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] || return 1
    grep -q '^NSpid:.*[[:space:]]1$' "/proc/$kid/status" || return 1
    echo "$kid"
}

bus_addr() { echo "unix:path=$S/run/dbus/system_bus_socket"; }

system_state() {
    busctl --address="$(bus_addr)" --timeout=2 get-property org.freedesktop.systemd1 \
        /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager SystemState 2>/dev/null \
        | awk '{gsub(/"/,"",$2); print $2}'
}

write_units() {
    local v=$S/vendor u
    mkdir -p "$v"
    # Harmless targets and the container-exit/poweroff chain, copied from the host.
    for u in sysinit basic sockets timers paths slices local-fs local-fs-pre \
             remote-fs remote-fs-pre swap network network-pre network-online \
             nss-lookup nss-user-lookup time-set time-sync multi-user \
             shutdown umount final poweroff halt reboot exit; do
        cp "/usr/lib/systemd/system/$u.target" "$v/"
    done
    for u in poweroff halt reboot exit; do
        cp "/usr/lib/systemd/system/systemd-$u.service" "$v/"
    done
    ln -sf multi-user.target "$v/default.target"
    ln -sf poweroff.target "$v/ctrl-alt-del.target"
    cat >"$v/dbus.socket" <<'EOF'
[Unit]
Description=D-Bus System Message Bus Socket (harness)
[Socket]
ListenStream=/run/dbus/system_bus_socket
EOF
    cat >"$v/dbus.service" <<'EOF'
[Unit]
Description=D-Bus System Message Bus (harness)
Requires=dbus.socket
[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only
ExecReload=/usr/bin/dbus-send --print-reply --system --type=method_call --dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig
EOF
    mkdir -p "$v/sockets.target.wants" "$v/multi-user.target.wants"
    ln -sf ../dbus.socket "$v/sockets.target.wants/dbus.socket"
    ln -sf ../dbus.service "$v/multi-user.target.wants/dbus.service"

    mkdir -p "$S/etc-systemd/system" "$S/etc-systemd/system.conf.d"
    cat >"$S/etc-systemd/system.conf" <<'EOF'
[Manager]
DefaultTimeoutStartSec=30s
DefaultTimeoutStopSec=10s
EOF
}

# Runs as PID 1 of the new namespaces (argv: state dir).  Sets up private
# mounts, then execs systemd.  Every mount here is in the private mount ns.
write_inner() {
    cat >"$S/inner.sh" <<'EOF'
#!/bin/sh
set -eu
S=$1
[ "$$" = 1 ] || { echo "inner: not PID 1" >&2; exit 90; }
# With SYSH_USERNS=1 the host writes our uid/gid maps right after unshare.
if [ "${SYSH_USERNS:-0}" = 1 ]; then
    i=0
    until [ -n "$(cat /proc/self/uid_map)" ] && [ -n "$(cat /proc/self/gid_map)" ]; do
        i=$((i + 1)); [ "$i" -lt 500 ] || { echo "inner: no uid map" >&2; exit 91; }
        sleep 0.01
    done
fi
mount --make-rprivate /
# Global sysctls (fs.file-max, fs.nr_open ...) must stay untouched: systemd
# PID 1 bumps some even in containers.  Read-only /proc/sys stops that.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro,nosuid,nodev,noexec /proc/sys
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi
# /sys read-only (=> no device units, no udev expectations); private cgroup2
# whose root is this cgroup namespace's root (the host's sysharness.NAME).
# (The host's cgroup mounts are overmounted, not unmounted: in a user
# namespace they are locked to their parent.)
mount -o remount,bind,ro,nosuid,nodev,noexec /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
# Private /dev: only harmless nodes; /dev/console is a log file.
D=$S/newdev
mount -t tmpfs -o mode=755,nosuid,size=4m harnessdev "$D"
for n in null zero full random urandom tty; do     # bind, not mknod: works
    : >"$D/$n"; mount --bind "/dev/$n" "$D/$n"     # in a user namespace too
done
mkdir -m 755 "$D/pts"; mkdir -m 1777 "$D/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$D/pts"
ln -s pts/ptmx "$D/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$D/shm"
ln -s /proc/self/fd "$D/fd"; ln -s /proc/self/fd/0 "$D/stdin"
ln -s /proc/self/fd/1 "$D/stdout"; ln -s /proc/self/fd/2 "$D/stderr"
# script(1) made our stdio a pty: it becomes /dev/console (-> console.log).
: >"$D/console"
T=$(tty 2>/dev/null || true)
case "$T" in
    /dev/pts/*) mount --bind "$T" "$D/console" ;;
    *) mount --bind /dev/null "$D/console" ;;
esac
mount --move "$D" /dev
# Private /run, /etc/systemd, /var/lib/systemd, vendor unit dir; no generators.
mount --bind "$S/run" /run
mount --bind "$S/etc-systemd" /etc/systemd
mount --bind "$S/var-lib-systemd" /var/lib/systemd
mount --bind "$S/vendor" /usr/lib/systemd/system
for d in system-generators system-environment-generators system-shutdown system-preset; do
    mount --bind "$S/empty" "/usr/lib/systemd/$d"
    mount -o remount,bind,ro "/usr/lib/systemd/$d"
done
exec /lib/systemd/systemd --system --log-target=console \
     --log-level="${SYSH_LOG_LEVEL:-info}" --show-status=yes
EOF
    chmod 755 "$S/inner.sh"
}

do_start() {
    [ "$(id -u)" = 0 ] || die "must be root"
    [ -x "$SYSTEMD" ] || die "$SYSTEMD missing"
    local t
    for t in unshare nsenter script busctl dbus-daemon; do
        command -v "$t" >/dev/null || die "$t not installed"
    done
    if ns_init_pid >/dev/null; then die "'$NAME' already running"; fi
    [ ! -e "$CG" ] || die "$CG exists (stale? run: $0 stop $NAME)"
    rm -rf "$S"
    mkdir -p "$S"/{run,var-lib-systemd,empty,newdev}
    chmod 755 "$S" "$S/run"
    : >"$S/console.log"
    write_units
    write_inner
    mkdir "$CG"
    local t0; t0=$(date +%s.%N)
    # The launcher moves itself into the private cgroup, then unshares; the
    # forked child (PID 1 inside) runs inner.sh which execs systemd.
    cat >"$S/launch.sh" <<'EOF'
#!/bin/bash
# argv: state dir, host cgroup dir, log level, userns (0/1)
echo $$ >"$1/unshare.pid"
echo $$ >"$2/cgroup.procs"
U=; [ "$4" = 1 ] && U=--user
exec unshare $U --pid --fork --kill-child --mount --mount-proc --uts --ipc \
     --net --cgroup --propagation private -- \
     env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
         SYSH_LOG_LEVEL="$3" SYSH_USERNS="$4" /bin/sh "$1/inner.sh" "$1"
EOF
    chmod 755 "$S/launch.sh"
    # script(1) gives the namespace a pty for /dev/console and copies it to
    # console.log (systemd only logs to a console that is a tty).
    setsid script -q -f -e -c "$S/launch.sh $S $CG ${SYSH_LOG_LEVEL:-info} $USERNS" \
        "$S/console.log" </dev/null >/dev/null 2>"$S/unshare.log" &
    if [ "$USERNS" = 1 ]; then
        # Identity-map all ids (so User=nobody etc. work and host files keep
        # their owners) but without any capability in the host user ns.
        local upid="" i
        for i in $(seq 1 100); do
            upid=$(cat "$S/unshare.pid" 2>/dev/null || true)
            [ -n "$upid" ] && [ "$(readlink "/proc/$upid/ns/user" 2>/dev/null)" != \
                "$(readlink /proc/self/ns/user)" ] && break
            sleep 0.02
        done
        [ -n "$upid" ] && [ "$(readlink "/proc/$upid/ns/user")" != "$(readlink /proc/self/ns/user)" ] \
            || die "no user namespace appeared (see $S/unshare.log)"
        echo "0 0 4294967295" >"/proc/$upid/uid_map"
        echo "0 0 4294967295" >"/proc/$upid/gid_map"
    fi
    local n st=""
    for n in $(seq 1 "$(( ${SYSH_TIMEOUT:-30} * 10 ))"); do
        st=$(system_state || true)
        case "$st" in running|degraded) break;; esac
        if [ -s "$S/unshare.pid" ] && ! [ -d "/proc/$(cat "$S/unshare.pid")" ]; then
            cat "$S/unshare.log" >&2; tail -n 30 "$S/console.log" >&2
            die "namespace exited during boot"
        fi
        sleep 0.1
    done
    case "$st" in running|degraded) ;; *)
        tail -n 30 "$S/console.log" >&2
        die "systemd did not reach running/degraded in ${SYSH_TIMEOUT:-30}s (state '$st')";;
    esac
    local t1; t1=$(date +%s.%N)
    echo "harness: '$NAME' $st in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s, ns PID 1 = host PID $(ns_init_pid)"
    do_env
}

do_env() {
    echo "DBUS_SYSTEM_BUS_ADDRESS=$(bus_addr)"
    # systemd's private socket refuses peers outside its PID namespace
    # ("Incoming private connection from unprivileged client"): exec only.
    echo "SYSH_ETC_SYSTEMD_SYSTEM=$S/etc-systemd/system"
}

do_exec() {
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "exec needs a command"
    local pid; pid=$(ns_init_pid) || die "'$NAME' not running"
    # Put the command into the namespace's cgroup root (so systemd can move it
    # into a scope), then enter all namespaces.  Falls back to the host
    # cgroup if the kernel refuses (controllers enabled in that cgroup).
    exec bash -c 'echo $$ >"$1/cgroup.procs" 2>/dev/null || true; shift
                  U=; [ "$(readlink /proc/$1/ns/user)" != "$(readlink /proc/self/ns/user)" ] && U=-U
                  exec nsenter -t "$1" $U -m -u -i -n -p -C --wd="$PWD" -- "${@:2}"' \
        harness "$CG" "$pid" "$@"
}

# Host-side `exec` helpers (nsenter parents): in our cgroup root but in the
# host PID namespace.  systemd-shutdown SIGSTOPs every process of the
# namespace; nsenter then stops itself (it mirrors a stopped child) and is
# outside the namespace, so nobody would SIGCONT it and its child's zombie
# would block shutdown.
exec_helpers() {
    local p hostns upid
    hostns=$(readlink /proc/self/ns/pid)
    upid=$(cat "$S/unshare.pid" 2>/dev/null || true)
    [ -r "$CG/cgroup.procs" ] || return 0
    for p in $(cat "$CG/cgroup.procs"); do
        [ "$p" != "$upid" ] && [ "$(readlink "/proc/$p/ns/pid" 2>/dev/null)" = "$hostns" ] \
            && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nsenter ] && echo "$p"
    done
    return 0
}

do_stop() {
    local pid upid i h
    upid=$(cat "$S/unshare.pid" 2>/dev/null || true)
    if pid=$(ns_init_pid); then
        kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true       # poweroff.target
        for i in $(seq 1 "$(( ${SYSH_STOP_TIMEOUT:-15} * 10 ))"); do
            [ -d "/proc/$pid" ] || break
            for h in $(exec_helpers); do kill -CONT "$h" 2>/dev/null || true; done
            sleep 0.1
        done
        if [ -d "/proc/$pid" ] && ns_init_pid >/dev/null; then
            echo "harness: graceful poweroff timed out, SIGKILL namespace" >&2
            kill -KILL "$pid" 2>/dev/null || true   # kills the whole PID ns
        fi
    fi
    if [ -n "$upid" ]; then
        for i in $(seq 1 50); do [ -d "/proc/$upid" ] || break; sleep 0.1; done
    fi
    if [ -d "$CG" ]; then
        for i in $(seq 1 50); do
            for h in $(exec_helpers); do kill -CONT "$h" 2>/dev/null || true; done
            [ -z "$(find "$CG" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
            [ "$i" = 30 ] && for h in $(exec_helpers); do kill -KILL "$h" 2>/dev/null || true; done
            sleep 0.1
        done
        find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ ! -d "$CG" ] || echo "harness: WARNING $CG not removed" >&2
    fi
    if grep -q " $S" /proc/self/mountinfo; then
        echo "harness: WARNING host mounts under $S" >&2
    elif [ "${SYSH_KEEP:-0}" != 1 ]; then
        rm -rf "$S"
    fi
    echo "harness: '$NAME' stopped"
}

do_status() {
    local pid; pid=$(ns_init_pid) || { echo "stopped"; return 1; }
    echo "host-pid=$pid state=$(system_state || echo '?')"
}

# Goals 2-4 from the HOST side over the system bus: ListUnits, transient
# `sleep 100` start/stop, persistent unit + Reload + StartUnit with User=nobody.
do_selftest() {
    local b="busctl --address=$(bus_addr) --timeout=10" M=org.freedesktop.systemd1.Manager
    local O=/org/freedesktop/systemd1 D=org.freedesktop.systemd1 u st
    ns_init_pid >/dev/null || die "'$NAME' not running"
    $b call $D $O $M ListUnits | grep -q '"dbus.service"' || die "ListUnits"
    $b call $D $O $M StartTransientUnit 'ssa(sv)a(sa(sv))' sysh-sleep.service fail \
        1 ExecStart 'a(sasb)' 1 /bin/sleep 2 /bin/sleep 100 false 0 >/dev/null
    sleep 0.3
    u=$($b call $D $O $M GetUnit s sysh-sleep.service | awk '{gsub(/"/,"",$2); print $2}')
    st=$($b get-property $D "$u" org.freedesktop.systemd1.Unit ActiveState)
    [ "$st" = 's "active"' ] || die "transient unit: $st"
    $b call $D $O $M StopUnit ss sysh-sleep.service replace >/dev/null
    cat >"$S/etc-systemd/system/sysh-nobody.service" <<'EOF'
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'test "$(id -u)" = 65534'
User=nobody
EOF
    $b call $D $O $M Reload >/dev/null
    sleep 0.3
    $b call $D $O $M StartUnit ss sysh-nobody.service replace >/dev/null
    sleep 0.5
    u=$($b call $D $O $M GetUnit s sysh-nobody.service | awk '{gsub(/"/,"",$2); print $2}')
    st=$($b get-property $D "$u" org.freedesktop.systemd1.Unit ActiveState)
    [ "$st" = 's "active"' ] || die "User=nobody unit: $st"
    $b call $D $O $M StopUnit ss sysh-nobody.service replace >/dev/null
    rm -f "$S/etc-systemd/system/sysh-nobody.service"
    $b call $D $O $M Reload >/dev/null
    echo "harness: selftest OK"
}

case "$CMD" in
    start) do_start ;;
    selftest) do_selftest ;;
    exec) do_exec "$@" ;;
    env) do_env ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
