# Recipes for shadowctl. Run `./bootstrap RECIPE` on a fresh machine: it installs
# what is missing first.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The demo: capture the bundled pcap and print the summary.
demo:
    cargo build --release --quiet
    mkdir -p demo-out
    ./target/release/shadowctl capture --read testdata/demo.pcap --out demo-out/exchanges.parquet --stats-json demo-out/capture-stats.json
    @echo "demo: wrote demo-out/exchanges.parquet and demo-out/capture-stats.json"

# Every test: unit, property and integration (needs ../shared/pcaps).
test:
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

# Fuzz the bytes -> exchanges path with cargo-fuzz (on stable via RUSTC_BOOTSTRAP).
fuzz SECS="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run capture_bytes -- -max_total_time={{SECS}}
