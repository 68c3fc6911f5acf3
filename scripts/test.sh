#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every
# test, plus the format and lint checks. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo's build cache lives outside the checkout, so a fresh clone rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/polld-target}"

# System packages the tests drive for real: git (with git daemon), Subversion
# (svn, svnadmin, svnserve), and sshd plus ssh-keygen for the ssh transport.
missing=()
command -v git >/dev/null || missing+=(git)
command -v svnserve >/dev/null || missing+=(subversion)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
