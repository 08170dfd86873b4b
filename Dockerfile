# qsfs in a container: `qsfs up` with its root in /data and the FUSE mount at /mnt/qsfs, shared
# back to the host through a bind mount with rshared propagation (see README, "Docker").
# Not built on the development machines (they have no Docker engine).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p qsfs-cli \
 && install -m 0755 target/release/qsfs /usr/local/bin/qsfs

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/qsfs /usr/local/bin/qsfs
# Config, key, engine, upload state and the default local backends. Keep it on a volume, and
# keep a copy of /data/qsfs.key (and /data/qsfs.toml) away from this machine: with them,
# `qsfs recover` rebuilds everything from the backends.
VOLUME /data
ENV QSFS_ROOT=/data
# The metrics endpoint listens on loopback inside the container unless the config sets
# `metrics = "0.0.0.0:9109"`.
EXPOSE 9109
# tini forwards SIGTERM (docker stop) to qsfs, which unmounts, flushes and exits 0.
ENTRYPOINT ["/usr/bin/tini", "--", "qsfs", "up", "/mnt/qsfs", "--root", "/data"]
