# syntax=docker/dockerfile:1
#
# egressd in a container: `docker build -t egressd .`, then see docs/deploying.md.
#
# Build on Debian 12 and run on distroless cc-debian12: the binary links glibc (libc, libm)
# and libgcc_s, which that image has, from the same Debian release. It needs no CA bundle:
# egressd verifies upstreams against the Mozilla roots compiled in (webpki-roots), or the
# `ca` of an [[mtls]] entry.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Release build with the lockfile; the caches make rebuilds incremental. The release profile
# keeps line tables (debug = 1) for profiling; the image needs only symbol names for
# backtraces, so debug info is stripped.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin egressd \
    && install -D -m 0755 target/release/egressd /out/usr/local/bin/egressd \
    && install -d -m 0750 /out/var/lib/egressd /out/etc/egressd

# nonroot: uid and gid 65532, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/egressd /usr/local/bin/egressd
# Config (egressd.toml and admin.token, mounted read-only) and state (activation times and
# schedules: mount persistent storage, writable by uid 65532; with [state] backend =
# "postgres", config/docker-ha.toml, only a local copy of the database's, so any volume will
# do). Created owned by nonroot so that a fresh named volume starts writable.
COPY --from=build --chown=65532:65532 /out/etc/egressd /etc/egressd
COPY --from=build --chown=65532:65532 /out/var/lib/egressd /var/lib/egressd
VOLUME ["/etc/egressd", "/var/lib/egressd"]
USER 65532:65532
WORKDIR /var/lib/egressd
# 3128: the proxy; 9901: health, metrics, the admin API and the console.
EXPOSE 3128 9901
# No curl or wget in the image: the binary asks its own /healthz (exit 0 on "ok", 1 otherwise).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/egressd", "health", "--admin", "http://127.0.0.1:9901", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/egressd"]
CMD ["--log-format", "json", "run", "--config", "/etc/egressd/egressd.toml"]
