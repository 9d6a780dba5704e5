# Multi-stage build: compile with the Rust toolchain, run on a small Debian image as non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src config src/quota/lua \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked || true
COPY config ./config
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home proxy
COPY --from=build /src/target/release/gemini-quota-proxy /usr/local/bin/gemini-quota-proxy
USER 10001
ENV PROXY_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gemini-quota-proxy"]
