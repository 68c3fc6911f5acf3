#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every
# test, plus the format and lint checks. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo's build cache lives outside the checkout, so a fresh clone rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/polld-target}"

# System packages the tests drive for real: git (with git daemon and git http-backend),
# Subversion (svn, svnadmin, svnserve; Apache with mod_dav_svn for http://), Mercurial,
# Apache (mod_ssl, mod_http2 and mod_cgid serve git over http and https; htpasswd),
# openssl (the tests' certificate authority), sshd plus ssh-keygen for ssh
# transports, PostgreSQL, and chromium.
missing=()
command -v git >/dev/null || missing+=(git)
command -v svnserve >/dev/null || missing+=(subversion)
command -v hg >/dev/null || missing+=(mercurial)
[ -x /usr/sbin/apache2 ] || missing+=(apache2)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
[ -e /usr/lib/apache2/modules/mod_dav_svn.so ] || missing+=(libapache2-mod-svn)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v openssl >/dev/null || missing+=(openssl)
# PostgreSQL for the shared store's tests (initdb and postgres; Debian keeps them in
# /usr/lib/postgresql/VERSION/bin, where the fixture also looks), and psql.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
# promtool checks and unit-tests deploy/prometheus/polld-rules.yml.
command -v promtool >/dev/null || missing+=(prometheus)
# Debian's chromium, run headless to test the control endpoint's status page.
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# A real Buildbot master for the delivery tests, in a venv kept outside the checkout.
export POLLD_BUILDBOT_VENV="${POLLD_BUILDBOT_VENV:-$HOME/.cache/polld-venv}"
if ! "$POLLD_BUILDBOT_VENV/bin/buildbot" --version >/dev/null 2>&1; then
    echo "creating the Buildbot venv in $POLLD_BUILDBOT_VENV"
    python3 -m venv "$POLLD_BUILDBOT_VENV"
    "$POLLD_BUILDBOT_VENV/bin/pip" install -q buildbot==4.3.0 buildbot-www==4.3.0
fi
# The official CloudEvents SDK, for the receiver that checks the cloudevents sink.
if ! "$POLLD_BUILDBOT_VENV/bin/python" -c 'import cloudevents.core.bindings.http' >/dev/null 2>&1; then
    "$POLLD_BUILDBOT_VENV/bin/pip" install -q cloudevents==2.2.0
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
