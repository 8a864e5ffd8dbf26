# secretfs in a container: mounts the secrets at /secrets, for other containers to read through a
# shared bind mount (Compose) or a shared volume (Kubernetes sidecar). Usage: docs/containers.md.
# Debian 12 (bookworm) slim with Python 3.11, as the project's CI machines.
FROM python:3.11-slim-bookworm

# fuse3: libfuse 3 (libfuse3.so.3, loaded by the FUSE binding) and fusermount3.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 \
    && rm -rf /var/lib/apt/lists/*

# secretfs from this source tree (see .dockerignore for what is left out).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY secretfs ./secretfs
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /

# The data directory holds a generated key and the SQLite database when no other is configured:
# keep it on a volume. /secrets is the mount point (an empty directory).
ENV SECRETFS_DATA_DIR=/var/lib/secretfs
RUN install -d -m 0700 /var/lib/secretfs && install -d -m 0755 /secrets
VOLUME ["/var/lib/secretfs"]

# docker stop sends SIGTERM: secretfs unmounts (lazily if busy) and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "/usr/local/bin/secretfs status /secrets > /dev/null || exit 1"]

# Runs as root (mounting needs CAP_SYS_ADMIN); --allow-other lets processes of other containers,
# under any uid, in. CMD holds the default file modes; replace it to change them (docs/containers.md).
ENTRYPOINT ["/usr/local/bin/secretfs", "mount", "-f", "/secrets", "--allow-other"]
CMD ["--file-mode", "0444", "--dir-mode", "0555"]
