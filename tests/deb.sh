#!/usr/bin/env bash
# Package test, run by .ci/run (needs root, dpkg and cargo-deb): build the
# .deb, install it, check what it installed, upgrade it in place, remove and
# purge it. Leaves the machine as it found it, even when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "tests/deb.sh: needs root (dpkg -i)"; exit 1; }
if dpkg-query -W -f='${Status}' switchctl 2>/dev/null | grep -q installed; then
    echo "tests/deb.sh: a switchctl package is already installed here; refusing to touch it"
    exit 1
fi
tmp=$(mktemp -d)
daemon=""
cleanup() {
    [[ -n $daemon ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    dpkg -P switchctl >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; exit 1; }
step() { echo "== $*"; }

step "build"
deb=$(packaging/build-deb.sh)
[[ -f $deb ]] || fail "no .deb at '$deb'"
version=$(dpkg-deb -f "$deb" Version)

step "install $deb"
dpkg -i "$deb"
switchctl --version | grep -q "switchctl" || fail "switchctl --version"
switchctl completions bash >"$tmp/completions.bash" && grep -q "_switchctl" "$tmp/completions.bash" || fail "bash completions"
[[ -s /usr/share/bash-completion/completions/switchctl ]] || fail "bash completion file"
[[ -s /usr/share/zsh/vendor-completions/_switchctl ]] || fail "zsh completion file"
[[ -s /usr/share/fish/vendor_completions.d/switchctl.fish ]] || fail "fish completion file"
man -w switchctl || fail "man -w switchctl"
man -w switchctl-deploy || fail "man -w switchctl-deploy"
file -L /usr/bin/switchctl | grep -Eq "static(-pie)? linked" || fail "binary is not static: $(file -L /usr/bin/switchctl)"
getent group switchctl >/dev/null || fail "no switchctl group"
dpkg-query --showformat='${Conffiles}\n' --show switchctl | grep -q /etc/switchctl/switchctl.toml ||
    fail "switchctl.toml is not a conffile"
for unit in switchctl.service switchctl.socket; do
    [[ -f /lib/systemd/system/$unit ]] || fail "$unit not installed"
done
systemd-analyze verify /lib/systemd/system/switchctl.socket /lib/systemd/system/switchctl.service ||
    fail "systemd-analyze verify"
[[ -L /etc/systemd/system/multi-user.target.wants/switchctl.service ]] || fail "switchctl.service not enabled"
[[ -L /etc/systemd/system/sockets.target.wants/switchctl.socket ]] || fail "switchctl.socket not enabled"

step "the installed (static) daemon starts and serves its admin socket"
# A static glibc binary must not look groups up through NSS: with
# `group: files systemd` a name missing from /etc/group loaded
# libnss_systemd into it and the daemon died with SIGSEGV at start.
daemon_config() { # admin_group -> a loopback config in $tmp
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$tmp/switchctl.toml" <<TOML
driver = "process"
state_dir = "$tmp/state"
[proxy]
listen = ["127.0.0.1:$port"]
admin_socket = "$tmp/admin.sock"
admin_group = "$1"
[[service]]
name = "web"
command = ["sh", "-c", "exec sleep 600 # never started here; {port}"]
health = { path = "/" }
TOML
}
daemon_config switchctl-deb-test-no-such-group
rc=0; timeout 20 switchctl --config "$tmp/switchctl.toml" proxy >"$tmp/missing.log" 2>&1 || rc=$?
[[ $rc -eq 1 ]] || fail "daemon with a missing admin_group: exit $rc, expected 1: $(tail -n 5 "$tmp/missing.log")"
grep -q "is not in /etc/group" "$tmp/missing.log" || fail "no clear error for a missing admin_group: $(tail -n 5 "$tmp/missing.log")"
daemon_config switchctl
switchctl --config "$tmp/switchctl.toml" proxy >"$tmp/daemon.log" 2>&1 &
daemon=$!
# The socket file appears at bind(), a moment before the daemon answers:
# ask until it does (10 s at most).
served=""
for _ in $(seq 1 100); do
    if switchctl --config "$tmp/switchctl.toml" status --json >"$tmp/status.out" 2>&1; then served=1; break; fi
    sleep 0.1
done
[[ -n $served ]] ||
    fail "switchctl status against the installed daemon: $(cat "$tmp/status.out"); daemon: $(tail -n 5 "$tmp/daemon.log")"
[[ $(stat -c %G "$tmp/admin.sock") == switchctl ]] || fail "admin socket group is $(stat -c %G "$tmp/admin.sock"), not switchctl"
kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""

step "upgrade keeps a changed conffile"
echo "# edited by the operator" >>/etc/switchctl/switchctl.toml
deb2=$(packaging/build-deb.sh --deb-version "${version}+upgrade1")
dpkg -i --force-confold "$deb2"
[[ $(dpkg-query -W -f='${Version}' switchctl) == "${version}+upgrade1" ]] || fail "upgrade did not install"
grep -q "edited by the operator" /etc/switchctl/switchctl.toml || fail "upgrade replaced the edited conffile"

step "remove and purge"
dpkg -r switchctl
[[ ! -e /usr/bin/switchctl ]] || fail "binary left after dpkg -r"
[[ -e /etc/switchctl/switchctl.toml ]] || fail "dpkg -r removed the conffile"
dpkg -P switchctl
[[ ! -e /etc/switchctl/switchctl.toml ]] || fail "conffile left after purge"
! getent group switchctl >/dev/null || fail "group left after purge"
echo "deb package: all checks passed"
