# shadowctl in a container (see docs/scale.md):
#   docker build -t shadowctl .
#   docker run --rm -v "$PWD:/work" -w /work shadowctl diff results.parquet
# Build stage: the Rust toolchain and libpcap's headers.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin shadowctl

# Runtime: libpcap (the binary links it, even for replay and diff) and CA
# certificates (https:// targets are verified against the system roots).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap0.8 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shadowctl /usr/local/bin/shadowctl
ENTRYPOINT ["shadowctl"]
CMD ["--help"]
