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
# Each package must hold these files (dpkg-deb -c lists ./path).
expect() {
    local deb=$1; shift
    local list
    list=$(dpkg-deb -c "$deb" | awk '{print $6}')
    for path in "$@"; do
        if ! grep -qx "./$path" <<<"$list"; then
            echo "build-debs: $deb lacks $path" >&2
            status=1
        fi
    done
}
cli=$(ls target/debian/daemonctl_*.deb)
demo=$(ls target/debian/daemon-lifecycle-demo_*.deb)
expect "$cli" usr/bin/daemonctl usr/share/man/man1/daemonctl.1.gz \
    usr/share/bash-completion/completions/daemonctl usr/share/zsh/vendor-completions/_daemonctl \
    usr/share/fish/vendor_completions.d/daemonctl.fish usr/share/doc/daemonctl/copyright \
    usr/share/doc/daemonctl/changelog.Debian.gz
expect "$demo" usr/bin/daemon-lifecycle-demo \
    usr/lib/systemd/system/daemon-lifecycle-demo.service
# The maintainer scripts cargo-deb generated, as dh_installsystemd would.
scripts=$(mktemp -d)
dpkg-deb -e "$demo" "$scripts"
for script in postinst prerm postrm; do
    if ! grep -q "daemon-lifecycle-demo.service" "$scripts/$script" 2>/dev/null; then
        echo "build-debs: $demo: $script does not handle daemon-lifecycle-demo.service" >&2
        status=1
    fi
done
rm -rf "$scripts"
for deb in "$cli" "$demo"; do
    echo "== $deb"
    dpkg-deb -c "$deb"
    # Errors fail the build; the warnings left are listed in the README.
    lintian --tag-display-limit 0 --fail-on error "$deb" || status=1
done
exit "$status"
