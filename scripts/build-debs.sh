#!/usr/bin/env bash
# Builds the two Debian packages (README, "For packagers") and checks them:
#   target/debian/daemonctl_*.deb              daemonctl, its man page, completions
#   target/debian/daemon-lifecycle-demo_*.deb  the demo daemon; its unit rendered
#                                              by daemonctl here, installed through
#                                              cargo-deb's systemd-units support
# Then lists their files (dpkg-deb -c) and runs lintian (no errors allowed).
# Needs cargo-deb (`cargo install cargo-deb --locked`) and lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=deb
out="target/$profile"

cargo build --profile "$profile" --bin daemonctl --example testd

# The assets cargo-deb packs: generated from the clap definition, never
# written by hand.
assets=target/deb-assets
rm -rf "$assets" target/deb-demo
mkdir -p "$assets"
"$out/daemonctl" man | gzip -n -9 > "$assets/daemonctl.1.gz"
"$out/daemonctl" completions bash > "$assets/daemonctl.bash"
"$out/daemonctl" completions zsh > "$assets/_daemonctl"
"$out/daemonctl" completions fish > "$assets/daemonctl.fish"

# The demo's unit, as a packager's build renders it: no host checks, so
# /usr/bin/daemon-lifecycle-demo need not exist here.
"$out/daemonctl" render --format systemd --out target/deb-demo \
    packaging/demo/daemon-lifecycle-demo.toml

cargo deb --no-build --profile "$profile" --no-strip -o target/debian/
cargo deb --no-build --profile "$profile" --no-strip --variant demo -o target/debian/

status=0
for deb in target/debian/daemonctl_*.deb target/debian/daemon-lifecycle-demo_*.deb; do
    echo "== $deb"
    dpkg-deb -c "$deb"
    # Errors fail the build; the warnings left are listed in the README.
    lintian --no-tag-display-limit --fail-on error "$deb" || status=1
done
exit "$status"
