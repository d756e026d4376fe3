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
cleanup() { dpkg -P switchctl >/dev/null 2>&1 || true; rm -rf "$tmp"; }
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
