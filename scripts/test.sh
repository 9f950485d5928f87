#!/usr/bin/env bash
# The project's test command, the one the README names and CI runs (`.ci/run` only calls
# this): on a fresh Debian/Ubuntu machine with the Rust toolchain it
#   1. starts RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379) if they are
#      down, installing them from Debian's packages when they are missing, and the loopback
#      Redis Cluster, Sentinel setup and RabbitMQ cluster of the cluster tests
#      (scripts/clusters.sh, not with --services);
#   2. installs what the tests need when it is missing: a C compiler (build-essential),
#      openssl and stunnel4 (tests/tls.rs), procps (`kill`), chromium and chromium-driver
#      (tests/console_browser.rs), the rustfmt and clippy
#      components, and cargo-deny (`cargo install --locked`);
#   3. runs the checks: cargo deny, cargo fmt, cargo clippy, the production build (no
#      emulator, no demo in the `wxpush` binary) and `cargo test --workspace` (with the
#      failover tests on the loopback clusters), then the pipeline, token and claims suites
#      again on Redis Cluster and on Sentinel.
# Installing needs root or sudo; everything else runs as the calling user.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh --services   # only step 1 (what `cargo run --release -- demo` needs)
#   bash scripts/test.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

services_only=false
case "${1:-}" in
"") ;;
--services) services_only=true ;;
-h | --help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "scripts/test.sh: unknown option '$1' (try --help)" >&2
    exit 2
    ;;
esac

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf '\nscripts/test.sh: %s\n' "$*" >&2
    exit 1
}

# Root runs apt-get directly; anyone else needs sudo, and is told so instead of getting
# apt-get's "are you root?".
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null ||
            fail "need to install $*, but not running as root and sudo is missing: install them, or run this script as root"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null ||
        fail "need to install $*, and this is not a Debian/Ubuntu machine (no apt-get): install them with your package manager, then run this again"
    echo "installing $* (apt-get)"
    # Noninteractive: CI has no terminal for debconf's questions.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
    step "Redis on 127.0.0.1:6379"
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "already running"
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    # The tests' own keys only: nothing is worth keeping on disk.
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/wxpush-test-redis.log
    for _ in $(seq 1 50); do
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 ||
        fail "Redis did not start; its log is /tmp/wxpush-test-redis.log"
    echo "started"
}

start_rabbitmq() {
    step "RabbitMQ on 127.0.0.1:5672"
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    if rabbitmqctl -q status >/dev/null 2>&1; then
        echo "already running"
        return
    fi
    # A node still booting fails `status` and refuses a second start: wait for it anyway.
    rabbitmq-server -detached || echo "rabbitmq-server -detached failed; waiting in case a node is already starting"
    rabbitmqctl await_startup --timeout 120 >/dev/null ||
        fail "RabbitMQ did not start within 120 s: see its logs under /var/log/rabbitmq"
    echo "started"
}

# Services first: they do not need Rust, and the demo needs nothing else.
start_redis
start_rabbitmq
if $services_only; then
    printf '\nRabbitMQ and Redis are running. Demo: cargo run --release -- demo\n'
    exit 0
fi

# The cluster tests' Redis Cluster, Sentinel setup and RabbitMQ cluster, on their own ports
# (7000-7005, 6380/6381, 26379-26381, 5701-5703), and the secured Redis set (TLS and
# passwords: 7100-7102, 6390, 26390): the tests find them through the WXPUSH_TEST_*
# variables this sets.
step "loopback clusters: scripts/clusters.sh start"
# Its secured set (TLS, tests/redis_secure_modes.rs) makes its certificates with openssl.
command -v openssl >/dev/null || apt_install openssl
eval "$(bash scripts/clusters.sh start)"

step "Rust toolchain"
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    # Installed by rustup but this shell never sourced ~/.cargo/env.
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null ||
    fail "cargo is not installed (or not on PATH). Install the Rust toolchain with rustup (https://rustup.rs), open a new shell (or run: . \"\$HOME/.cargo/env\"), then run this again."
cargo --version
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null ||
        fail "cargo fmt or cargo clippy is missing and there is no rustup to add them: install rustfmt and clippy for your toolchain"
    echo "adding the rustfmt and clippy components"
    rustup component add rustfmt clippy
fi

step "tools the tests need"
need=()
command -v cc >/dev/null || need+=(build-essential)         # linking, and crates that build C
command -v openssl >/dev/null || need+=(openssl)             # tests/tls.rs makes a CA
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null ||
    need+=(stunnel4)                                          # tests/tls.rs: TLS in front of the servers
type -P kill >/dev/null || need+=(procps)                    # tests send signals with kill(1)
command -v chromium >/dev/null || need+=(chromium)           # tests/console_browser.rs: a real browser
command -v chromedriver >/dev/null || need+=(chromium-driver) # ... driven over WebDriver
if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}"
fi
if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny (cargo install --locked; takes a few minutes once)"
    cargo install --locked --quiet cargo-deny
fi
echo "cc, openssl, stunnel, kill, chromium, chromedriver, cargo-deny: present"

step "cargo deny check bans licenses sources"
cargo deny --log-level error check bans licenses sources

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

# The production image builds `wxpush` with --no-default-features (deploy/Dockerfile): that
# binary must have neither the emulator nor the demo, and must not link the emulator's
# crate at all. Checked with the dev profile, which the tests below build anyway: features,
# not optimisation, decide what is in the binary.
step "production build: cargo build --locked --no-default-features --bin wxpush"
cargo build --locked --no-default-features --bin wxpush --quiet
bin="${CARGO_TARGET_DIR:-target}/debug/wxpush"
if "$bin" mock-wechat --help >/dev/null 2>&1 || "$bin" demo --help >/dev/null 2>&1; then
    fail "the production build of wxpush still has the mock-wechat or demo subcommand: keep them behind the dev-tools feature (Cargo.toml, src/cli/mod.rs)"
fi
if cargo tree --locked -p wxpush --no-default-features --edges normal --prefix none |
    grep -q '^wxpush-mock-wechat '; then
    fail "the production build of wxpush links wxpush-mock-wechat: it must be an optional dependency enabled only by dev-tools"
fi
echo "no mock-wechat, no demo, wxpush-mock-wechat not linked"

# Last, so the tests rebuild target/debug/wxpush with the default features (developer tools
# included) and leave it that way.
step "cargo test --workspace --features wxpush/failpoints"
cargo test --workspace --locked --features wxpush/failpoints

# The same suites on the other Redis modes (parameterised by WXPUSH_TEST_REDIS_MODE, see
# tests/common/mod.rs): the pipeline end to end, the token store, the claim state machine,
# and the stores added with them: app holds and the rate limiter (limits), the grant
# ledger (grant_flow), the delivery record (delivery_record).
# tests/failover.rs ran above with the workspace.
for mode in cluster sentinel; do
    step "cargo test (pipeline, token, claims, limits, grant_flow, delivery_record) on Redis $mode"
    WXPUSH_TEST_REDIS_MODE=$mode cargo test --locked --features wxpush/failpoints \
        --test pipeline --test token --test claims --test limits --test grant_flow \
        --test delivery_record
done
