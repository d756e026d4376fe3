#!/usr/bin/env bash
# Build switchctl's .deb: a static release binary (crt-static on the gnu
# target, so it runs on any x86_64 Linux), completions and man pages generated
# from the clap definitions, then `cargo deb --no-build`. Prints the .deb path.
#   packaging/build-deb.sh [--deb-version VERSION]
#   PROFILE=deb-check packaging/build-deb.sh    # quicker build, for the package test
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
profile=${PROFILE:-release}
# pack-relative-relocs: the start-up relocations as a 4 KiB bitmap (DT_RELR,
# glibc >= 2.36, linked in) instead of 364 KiB of entries, which every
# command, `flip back` included, read before main.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --profile "$profile" --locked --target "$target" -p switchctl >&2
bin="target/$target/$profile/switchctl"
file -L "$bin" | grep -Eq "static(-pie)? linked" || { echo "$bin is not statically linked: $(file -L "$bin")" >&2; exit 1; }

assets=target/deb-assets
rm -rf "$assets" && mkdir -p "$assets/man"
"$bin" completions bash >"$assets/switchctl.bash"
"$bin" completions zsh >"$assets/_switchctl"
"$bin" completions fish >"$assets/switchctl.fish"
"$bin" man "$assets/man" >&2
gzip -9n "$assets"/man/*.1

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked >&2
cargo deb --no-build --profile "$profile" --target "$target" -p switchctl "$@" 2>/dev/null | tail -n 1
