#!/usr/bin/env bash
# Set up a Debian 12 machine for ustack. This is the only place that installs
# anything: scripts/test, scripts/demo, scripts/bootstrap and the Vagrantfile
# all call it, so CI (.ci/run -> scripts/test) runs this very code and it
# cannot rot. Every step checks first, so a re-run takes well under a second.
#
#   vagrant/provision.sh install    Debian tools + .venv (what the scripts use)
#   vagrant/provision.sh packages   only the Debian tools the tests drive
#   vagrant/provision.sh venv       only .venv, with `pip install -e '.[test]'`
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
# Holds the hash of the pyproject.toml last installed, to skip pip on re-runs.
STAMP=$VENV/.ustack-installed

# The kernel-side tools the interop tests and the demo run.
PACKAGES=(iproute2 iputils-ping netcat-openbsd curl wget tcpdump ethtool procps kmod iptables)

APT_UPDATED=false

die() { echo "provision.sh: $*" >&2; exit 1; }
say() { echo "provision.sh: $*"; }

# Print the packages among "$@" that dpkg does not have installed.
missing_packages() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || echo "$pkg"
    done
}

# Install those of "$@" that are missing. Returns 1 (installing nothing) when
# some are missing but we are not root, so the caller decides how bad that is.
apt_install() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]})) || return 0
    if [[ $EUID -ne 0 ]]; then
        say "not root, so not installing: ${missing[*]}"
        return 1
    fi
    say "installing ${missing[*]}"
    # No terminal in CI or under Vagrant: never prompt. A fresh VM may still
    # be running unattended-upgrades, so wait for the dpkg lock, not fail.
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    if ! $APT_UPDATED; then
        "${apt[@]}" update </dev/null >/dev/null || die "apt-get update failed"
        APT_UPDATED=true
    fi
    "${apt[@]}" install --no-install-recommends "${missing[@]}" </dev/null >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

install_packages() {
    if ! command -v dpkg-query >/dev/null; then
        say "not a Debian system: install these tools yourself: ${PACKAGES[*]}"
        return 0
    fi
    # Without root, unit tests still run and interop tests skip: warn, go on.
    apt_install "${PACKAGES[@]}" || say "tests that need the missing tools will skip or fail"
}

venv_works() { [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' 2>/dev/null; }

create_venv() {
    if [[ -e $VENV ]]; then
        # E.g. copied from another machine, or its Python was removed.
        say "$VENV is broken (its python does not run): recreating it"
        rm -rf "$VENV"
    fi
    if ! command -v python3 >/dev/null; then
        apt_install python3 || die "python3 is missing: run as root to install it"
    fi
    # Debian splits venv/ensurepip out of python3 into python3-venv.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv || die "python3-venv is missing: run as root to install it"
    fi
    say "creating $VENV"
    if ! python3 -m venv "$VENV"; then
        rm -rf "$VENV"  # so the next run starts clean
        die "python3 -m venv $VENV failed"
    fi
}

install_venv() {
    venv_works || create_venv
    local hash
    hash=$(sha256sum <"$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [[ -x $VENV/bin/ustack && -f $STAMP && $(<"$STAMP") == "$hash" ]]; then
        return 0
    fi
    say "installing ustack and its test dependencies into .venv (pip install -e '.[test]')"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "${ROOT}[test]" \
        || die "pip install -e '.[test]' failed (pip's message is above)"
    [[ -x $VENV/bin/ustack ]] || die "pip install succeeded but $VENV/bin/ustack is missing"
    echo "$hash" >"$STAMP"
}

usage() { echo "usage: $0 install|packages|venv" >&2; exit 2; }

[[ $# -eq 1 ]] || usage
case $1 in
    install) install_packages; install_venv ;;
    packages) install_packages ;;
    venv) install_venv ;;
    *) usage ;;
esac
