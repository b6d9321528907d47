#!/usr/bin/env bash
# The test command: installs what the tests need, then format, lints, docs and every test.
# Used as is by .ci/run. Needs: the Rust toolchain (cargo, rustfmt, clippy), cmake and a C compiler
# (the bundled libopus), sipp (Debian package sip-tester) for the SIP interop tests, redis-server
# for the cluster registry tests, and python3-aiortc, python3-numpy and chromium for the WebRTC
# interop tests; all are installed here when apt-get is usable.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/packages.sh
mapfile -t missing < <(build_packages)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
/usr/bin/python3 -c 'import aiortc, numpy' >/dev/null 2>&1 || missing+=(python3-aiortc python3-numpy)
[[ -x /usr/lib/chromium/chromium ]] || missing+=(chromium)
install_missing "${missing[@]}"
for tool in rustfmt clippy-driver; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "missing: $tool. Install with: rustup component add ${tool%-driver}" >&2
        exit 1
    }
done

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "==> cargo build (binaries for the end-to-end tests)"
cargo build --workspace --bins --locked
echo "==> cargo build (a voxgate whose cap lets one session too many in, for the test that must catch it)"
cargo build -p voxgate-proxy --features fault-over-cap --locked
cp "${CARGO_TARGET_DIR:-target}/debug/voxgate" "${CARGO_TARGET_DIR:-target}/debug/voxgate-over-cap"
# The normal binary back in place.
cargo build --workspace --bins --locked
echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every test binary runs even when one fails; the closing line counts them all.
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo's last line is often a doc-test run of 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
