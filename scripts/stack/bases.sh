# The local base images and stand-ins of scripts/stack.sh `bases`. Sourced by scripts/stack.sh (its variables and helpers); not run on its own.
# shellcheck shell=bash

# --- bases -------------------------------------------------------------------------------------

debian_base() {
    have_image "$DEBIAN_IMAGE" && return
    local tarball="$STATE/rootfs/debian-bookworm-minbase.tar"
    if [[ ! -f $tarball ]]; then
        local dir="$STATE/rootfs/debian-bookworm" mirror
        mirror=$(debian_mirror)
        say "debootstrap --variant=minbase bookworm from $mirror (about 2 minutes)"
        rm -rf "$dir"
        mkdir -p "$dir"
        heavy debootstrap --variant=minbase bookworm "$dir" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
            || die "debootstrap failed (see $STATE/debootstrap.log)"
        # The updates and security suites, as the official debian:bookworm image has them.
        cat > "$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        heavy tar -C "$dir" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$dir"
    fi
    say "importing $tarball as $DEBIAN_IMAGE"
    heavy podman import --change 'CMD ["bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
}

python_base() {
    have_image "$PYTHON_IMAGE" && return
    # What the Dockerfiles use from python:3.11.x-slim-bookworm: `python` (3.11, with venv and
    # ensurepip, so `python -m venv` gives a venv with pip), CA certificates, tzdata, netbase,
    # useradd (passwd, already in minbase), ldconfig (libc-bin). Debian's python3.11 is 3.11.2,
    # the official image's is 3.11.14.
    local dir="$STATE/python-base"
    mkdir -p "$dir"
    cat > "$dir/Containerfile" <<'EOF'
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python-is-python3 ca-certificates netbase tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && python --version
CMD ["python3"]
EOF
    say "building $PYTHON_IMAGE from Debian's python3.11"
    heavy podman build --network host --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -t "$PYTHON_IMAGE" -f "$dir/Containerfile" "$dir" >&2
}

postgres_standin() {
    have_image "$POSTGRES_IMAGE" && return
    # For compose's postgres:16.10-bookworm: Debian's PostgreSQL (15 on bookworm; 16 is not
    # packaged there) with the few things of the official image's entrypoint that the stack
    # uses: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on first start, data in
    # /var/lib/postgresql/data, password logins over the network, pg_isready on PATH.
    local dir="$STATE/postgres"
    mkdir -p "$dir"
    cat > "$dir/entrypoint.sh" <<'EOF'
#!/bin/sh
# First start: a cluster owned by POSTGRES_USER with POSTGRES_PASSWORD, and database POSTGRES_DB.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "postgres: POSTGRES_PASSWORD is not set" >&2; exit 1; }
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    if [ "$POSTGRES_DB" != postgres ]; then createdb -U "$POSTGRES_USER" "$POSTGRES_DB"; fi
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
    cat > "$dir/Containerfile" <<'EOF'
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
RUN mkdir -p /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY --chmod=755 entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
EOF
    say "building $POSTGRES_IMAGE from Debian's postgresql-15"
    heavy podman build --network host --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -t "$POSTGRES_IMAGE" -f "$dir/Containerfile" "$dir" > "$STATE/build-postgres.log" 2>&1 \
        || { tail -n 30 "$STATE/build-postgres.log" >&2; die "postgres stand-in failed"; }
}

s3_standin() {
    have_image "$S3_IMAGE" && return
    # For compose's minio and minio-init (no MinIO package here): moto's S3 server and boto3.
    local dir="$STATE/s3" volumes
    mkdir -p "$dir"
    cat > "$dir/Containerfile" <<'EOF'
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir "moto[server]==5.2.5" "boto3>=1.34" \
 && useradd --create-home --uid 1000 --user-group s3
USER 1000:1000
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
EOF
    mapfile -t volumes < <(pip_volumes)
    say "building $S3_IMAGE (moto_server)"
    heavy podman build --network host "${volumes[@]}" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        -t "$S3_IMAGE" -f "$dir/Containerfile" "$dir" > "$STATE/build-s3.log" 2>&1 \
        || { tail -n 30 "$STATE/build-s3.log" >&2; die "S3 stand-in failed"; }
}

cmd_bases() {
    cmd_engine
    mkdir -p "$STATE/rootfs"
    debian_base
    python_base
    postgres_standin
    s3_standin
    podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep waldo-local >&2
}
