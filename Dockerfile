# gemini-quota-proxy: compile with the Rust toolchain, run on a small Debian image as non-root.
#
#   docker build -t gemini-quota-proxy .
#   docker run --rm -p 8080:8080 -e GEMINI_API_KEY=... -e PROXY_CLIENT_KEYS=... gemini-quota-proxy
#
# TLS to Google is rustls with compiled-in webpki roots: no OpenSSL at build or run time.

# ---------- build ----------
FROM rust:1-bookworm AS build
WORKDIR /src

# 1. Dependencies only, cached until Cargo.toml / Cargo.lock change. Stub targets with the
#    crate's real shape (a library and a binary) so every dependency compiles here.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The real sources. Files the sources embed at compile time must be present too:
#    config/default.toml (src/config/mod.rs), src/quota/redis/lua/*.lua (src/quota/redis/mod.rs)
#    and assets/dashboard/* (src/status/dashboard.rs). tests/it/docker_context.rs checks the crate
#    from exactly what these COPY lines (and .dockerignore) give. COPY keeps the files' own
#    mtimes, which can be older than the stub build: touch the crate roots so cargo rebuilds the
#    crate (never the dependencies). The last line fails the build if the stub's binary survived
#    (it prints nothing).
COPY config ./config
COPY assets ./assets
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/gemini-quota-proxy --print-default-config | grep -q '^\[server\]'

# ---------- run ----------
FROM debian:bookworm-slim
# ca-certificates: not needed by the proxy itself (webpki roots are compiled in), kept for anyone
# debugging TLS from inside the container. Debian already has a user named "proxy" (uid 13), so
# ours is "gqp".
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gqp \
    && useradd --system --uid 10001 --gid gqp --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gqp
COPY --from=build /src/target/release/gemini-quota-proxy /usr/local/bin/gemini-quota-proxy
USER 10001:10001
# The default listen address is 127.0.0.1:8080, unreachable from outside a container.
ENV PROXY_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No HEALTHCHECK: the slim image has no curl/wget and the binary has no probe mode. Probe over
# HTTP from the orchestrator instead: GET /healthz (liveness), GET /readyz (store reachable).
# SIGTERM (docker stop) drains in-flight requests for server.shutdown_grace_secs (default 30 s),
# so give `docker stop -t` / terminationGracePeriodSeconds a little more than that.
ENTRYPOINT ["/usr/local/bin/gemini-quota-proxy"]
