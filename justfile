# Recipes for shadowctl. Run `./bootstrap RECIPE` on a fresh machine: it installs
# what is missing first.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The demo: services v1 and v2 on loopback, live capture (or the bundled
# pcap), replay, diff; reports in demo-out/. See docs/demo.md.
demo:
    cargo build --release --quiet --bin shadowctl --example demo_service
    bash scripts/demo.sh

# Every test: unit, property and integration. Makes .venv (Python packages
# the tests use) first. Tests that need ../shared/pcaps skip without it
# unless SHADOWCTL_REQUIRE_CORPUS=1.
test:
    bash scripts/test-venv.sh
    cargo test --all-targets --no-fail-fast

# Formatting and lints, as CI would want them.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Capture throughput and memory against tshark on ~1 GB of loopback traffic.
bench-capture *ARGS:
    cargo build --release --quiet
    bash bench/capture.sh {{ARGS}}

# Live capture on loopback under wrk load at fixed rates, beside tcpdump (needs root).
bench-live *ARGS:
    cargo build --release --quiet
    bash bench/live.sh {{ARGS}}

# Fuzz the bytes -> exchanges path and the replay client's reading of answers
# with cargo-fuzz (on stable via RUSTC_BOOTSTRAP), SECS seconds each.
fuzz SECS="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run capture_bytes -- -max_total_time={{SECS}}
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run replay_response -- -max_total_time={{SECS}}

# Replay throughput, rate accuracy and memory against oha, with nginx on loopback.
bench-replay *ARGS:
    cargo build --release --quiet
    bash bench/replay.sh {{ARGS}}

# diff on 1M synthetic exchanges against a pyarrow script on the same file.
bench-diff *ARGS:
    cargo build --release --quiet --bin shadowctl --example make_results
    bash bench/diff.sh {{ARGS}}

# Render an HTML report and screenshot it with headless Chromium (Debian's chromium).
report-screenshot:
    cargo build --release --quiet --bin shadowctl --example make_results
    mkdir -p bench-out/screenshot
    ./target/release/examples/make_results 20000 0.03 bench-out/screenshot/results.parquet
    ./target/release/shadowctl diff bench-out/screenshot/results.parquet --config testdata/demo-shadow.toml --html bench-out/screenshot/report.html -q || true
    command -v chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,4000 --screenshot=bench-out/screenshot/report.png "file://$PWD/bench-out/screenshot/report.html"
    @echo "screenshot: bench-out/screenshot/report.png"
