#!/usr/bin/env bash
# Type-checks the crate (lib, bins, tests, examples) for the non-Linux
# platforms the README lists, with warnings as errors. Nothing is linked or
# run: these targets need no linker and no SDK.
#
#   scripts/check-platforms.sh            # all three targets
#   scripts/check-platforms.sh TARGET...  # only these
#
# Per target:
# - a rustup target, if `rustup target list --installed` has it:
#   `cargo check --target T`;
# - otherwise Debian's route: rustc-web, cargo-web and rust-web-src (1.96)
#   give a std source, and `cargo -Zbuild-std` type-checks std for T first
#   (RUSTC_BOOTSTRAP=1 unlocks -Z on that stable toolchain). Its std
#   dependencies are resolved from the source's own library/Cargo.lock and
#   downloaded from crates.io into CARGO_HOME like any other crate.
#   Missing packages are installed when run as root (apt-get update first:
#   1.96 comes from bookworm-security; bookworm's own lists carry 1.85).
#
# Warnings fail the check: RUSTFLAGS gets -D warnings. Cargo caps lints for
# dependencies and for the std crates of -Zbuild-std, so only this crate's
# warnings count. Everything goes to its own target dir
# ($XPLAT_TARGET_DIR, default target-xplat/), away from the Linux build's.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd)
fi
target_dir="${XPLAT_TARGET_DIR:-$PWD/target-xplat}"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-D warnings"
what=(--lib --bins --tests --examples)

installed_rustup_targets=""
if command -v rustup >/dev/null 2>&1; then
    installed_rustup_targets="$(rustup target list --installed 2>/dev/null || true)"
fi
has_rustup_target() { grep -qxF "$1" <<<"$installed_rustup_targets"; }

debian_pkgs=(rustc-web cargo-web rust-web-src)
debian_rustc=/usr/bin/rustc
debian_cargo=/usr/bin/cargo
debian_ready() {
    [ -x "$debian_rustc" ] && [ -x "$debian_cargo" ] || return 1
    local sysroot
    sysroot="$("$debian_rustc" --print sysroot 2>/dev/null)" || return 1
    [ -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]
}
ensure_debian() {
    debian_ready && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "check-platforms: no rustup target and no Debian std source;" \
            "install ${debian_pkgs[*]} (as root: apt-get install) or" \
            "rustup target add ${targets[*]}" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${debian_pkgs[@]}" >/dev/null
    debian_ready || {
        echo "check-platforms: ${debian_pkgs[*]} installed, but $debian_rustc has no std source" >&2
        return 1
    }
}

results=()
failed=0
for t in "${targets[@]}"; do
    start=$(date +%s)
    if has_rustup_target "$t"; then
        route="rustup target, $(rustc --version | cut -d' ' -f2)"
        echo "== $t: cargo check ($route)"
        cmd=(cargo check --target "$t" "${what[@]}" --target-dir "$target_dir")
        vars=()
    else
        ensure_debian || exit 1
        route="Debian $("$debian_rustc" --version | cut -d' ' -f2) -Zbuild-std"
        echo "== $t: cargo check ($route)"
        cmd=("$debian_cargo" check -Zbuild-std=std,panic_abort --target "$t" "${what[@]}"
            --target-dir "$target_dir")
        vars=(RUSTC_BOOTSTRAP=1 "RUSTC=$debian_rustc")
    fi
    if env "${vars[@]}" "${cmd[@]}"; then
        status=ok
    else
        status=FAILED
        failed=1
    fi
    results+=("$(printf '%-24s %-6s %4ss  (%s)' "$t" "$status" "$(($(date +%s) - start))" "$route")")
done

echo "== check-platforms:"
printf '   %s\n' "${results[@]}"
exit "$failed"
