#!/usr/bin/env bash
# Build Waldo's images and run docker-compose.yml on a real container engine where Docker is
# missing and no registry is reachable (these machines: Debian 12, podman + runc, docker-compose
# 1.29 on podman's Docker-compatible socket; ENVIRONMENT.md "Containers").
#
#   scripts/stack.sh engine   # install and configure podman + runc, start the Docker-API socket
#   scripts/stack.sh bases    # local base images (Debian minbase, Python 3.11), built once, cached
#   scripts/stack.sh build    # the project's images from infra/docker/, on the local bases
#
# Bringing docker-compose.yml up on podman (up, smoke, down) is the open part of issue 17: podman
# 4.3 splits exec-form health checks it receives over the Docker API (containers/podman#26519).
#
# Each step does what the previous ones left undone, so `build` alone works on a bare machine.
# Every heavy command runs under `nice -n 19 ionice -c3` (WALDO_STACK_NICE to change it): these
# machines are shared. Run as root (apt-get, podman's rootful storage).
#
# Settings (environment):
#   WALDO_STACK_DIR      state: socket, pid file, logs, cached root file systems (/var/tmp/waldo-stack)
#   WALDO_DEBIAN_MIRROR  the Debian mirror for debootstrap (default: the one apt uses here)
#   WALDO_IMAGES         which project images `build` builds (default: all four; compose needs
#                        them all, and `up --build` through the socket could not mount the
#                        build volumes that pip needs here)
#   WALDO_IMAGE_PREFIX, WALDO_IMAGE_TAG   as in docker-compose.yml (waldo, 0.1.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${WALDO_STACK_DIR:-/var/tmp/waldo-stack}"
SOCKET="$STATE/podman.sock"
read -r -a NICE <<< "${WALDO_STACK_NICE:-nice -n 19 ionice -c3}"
PREFIX="${WALDO_IMAGE_PREFIX:-waldo}"
TAG="${WALDO_IMAGE_TAG:-0.1.0}"

# Local stand-ins for the official bases (same Debian release, same Python minor version).
DEBIAN_IMAGE="localhost/waldo-local/debian:bookworm"
PYTHON_IMAGE="localhost/waldo-local/python:3.11-slim-bookworm"
# ... and for the services whose official images cannot be pulled or installed here.
POSTGRES_IMAGE="localhost/waldo-local/postgres:15-bookworm"
S3_IMAGE="localhost/waldo-local/s3:moto-5.2.5"

say() { printf 'stack: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
heavy() { "${NICE[@]}" "$@"; }
have_image() { podman image exists "$1" 2>/dev/null; }

# --- engine ------------------------------------------------------------------------------------

debian_mirror() {
    if [[ -n "${WALDO_DEBIAN_MIRROR:-}" ]]; then echo "$WALDO_DEBIAN_MIRROR"; return; fi
    # The first non-security Debian mirror in apt's sources (deb822 or one-line format).
    local uri
    uri=$(grep -h -o -E '(URIs:|^deb) +[a-z]+://[^ ]+' /etc/apt/sources.list.d/*.sources \
              /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

install_packages() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $(id -u) -eq 0 ]] || die "installing ${missing[*]} needs root"
    say "apt-get install ${missing[*]}"
    heavy apt-get install -y -q "${missing[@]}" >&2 \
        || { heavy apt-get update -q >&2 && heavy apt-get install -y -q "${missing[@]}" >&2; }
}

configure_podman() {
    # A drop-in, so that an administrator's containers.conf stays as it is. podman's default
    # runtime, crun, fails on these hosts ("cgroups in hybrid mode not supported") and its
    # default ulimits are refused.
    local conf=/etc/containers/containers.conf.d/50-waldo.conf
    if [[ ! -f $conf ]]; then
        say "writing $conf (runtime runc, no default ulimits)"
        mkdir -p "$(dirname "$conf")"
        cat > "$conf" <<'EOF'
# Written by Waldo's scripts/stack.sh. crun fails on these hosts ("cgroups in hybrid mode not
# supported"), and podman's default ulimits are not permitted here.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
    fi
    [[ $(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null) == runc ]] \
        || die "podman does not use runc; check /etc/containers/containers.conf"
}

socket_alive() {
    [[ -S $SOCKET ]] && curl -fsS --max-time 5 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

start_socket() {
    socket_alive && return
    mkdir -p "$STATE"
    rm -f "$SOCKET"
    say "starting podman's Docker-compatible API on unix://$SOCKET"
    # Niced too: the containers that docker-compose starts through it inherit its priority.
    nohup "${NICE[@]}" podman system service --time=0 "unix://$SOCKET" > "$STATE/podman-service.log" 2>&1 &
    echo $! > "$STATE/podman-service.pid"
    for _ in $(seq 50); do socket_alive && return; sleep 0.2; done
    die "podman system service did not answer on $SOCKET (see $STATE/podman-service.log)"
}

# podman runs health checks from systemd timers ("unable to get systemd connection to add
# healthchecks"); without systemd every container stays "starting" and compose's
# `condition: service_healthy` never holds. This loop stands in for the timers: it runs each
# running container's check (`podman healthcheck run`, which keeps podman's own count of
# retries and start period) once per the check's interval.
healthcheck_loop() {
    declare -A last=() every=()  # per container: last run, interval in seconds (0: no check)
    local id interval now
    while true; do
        now=$(date +%s)
        for id in $(podman ps -q 2>/dev/null); do
            if [[ -z ${every[$id]:-} ]]; then
                interval=$(podman inspect --format \
                    '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval}}{{end}}' "$id" 2>/dev/null) || continue
                # "10s", "1m30s", "" -> seconds
                every[$id]=$(awk -v d="$interval" 'BEGIN { if (d == "") { print 0; exit }
                    s = 0; if (d ~ /m/) { split(d, p, "m"); s = p[1] * 60; d = p[2] }
                    sub(/s$/, "", d); s = int(s + d); print (s > 0 ? s : 30) }')
            fi
            (( every[$id] > 0 )) || continue
            if (( now - ${last[$id]:-0} >= every[$id] )); then
                last[$id]=$now
                podman healthcheck run "$id" >/dev/null 2>&1 || true
            fi
        done
        sleep 2
    done
}

start_healthchecks() {
    local pidfile="$STATE/healthchecks.pid"
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return; fi
    [[ -d /run/systemd/system ]] && return  # systemd runs podman's timers itself
    say "starting the health-check loop (no systemd here to run podman's timers)"
    nohup "${NICE[@]}" "$ROOT/scripts/stack.sh" _healthchecks > "$STATE/healthchecks.log" 2>&1 &
    echo $! > "$pidfile"
}

cmd_engine() {
    install_packages
    configure_podman
    start_socket
    start_healthchecks
    say "engine ready: podman $(podman version --format '{{.Client.Version}}'), runtime runc;" \
        "for docker-compose: export DOCKER_HOST=unix://$SOCKET"
}

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

# --- build -------------------------------------------------------------------------------------

# pip inside a build uses this machine's package sources: the host's pip settings (local
# wheel folders and indexes, mounted read-only at the same paths) and its CA bundle (the one in
# a fresh Debian image is not enough to reach PyPI from here). Only the build sees them; the
# images do not keep them.
pip_volumes() {
    local conf="" path
    for path in "${PIP_CONFIG_FILE:-}" "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" /etc/pip.conf; do
        [[ -n $path && -f $path ]] && { conf=$path; break; }
    done
    local volumes=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    if [[ -n $conf ]]; then
        # one pip.conf with the host's settings plus the CA bundle
        { cat "$conf"; grep -q '^cert' "$conf" || echo "cert = /etc/ssl/certs/ca-certificates.crt"; } \
            > "$STATE/pip.conf"
        volumes+=(-v "$STATE/pip.conf:/etc/pip.conf:ro")
        # a local index's pages link to ../../files/: mount the folder above simple/
        for path in $(grep -h -o -E '(file://)?/[^ ]+' "$conf" | sed -e 's#^file://##' -e 's#/simple/*$##'); do
            if [[ -d $path ]]; then volumes+=(-v "$path:$path:ro"); fi
        done
    fi
    printf '%s\n' "${volumes[@]}"
}

build_image() {
    local name=$1 start end volumes
    mapfile -t volumes < <(pip_volumes)
    say "building $PREFIX/$name:$TAG (infra/docker/$name.Dockerfile on $PYTHON_IMAGE)"
    start=$(date +%s)
    # --format docker: podman's default (OCI) drops the Dockerfiles' HEALTHCHECK.
    heavy podman build --format docker --network host "${volumes[@]}" \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        -f "$ROOT/infra/docker/$name.Dockerfile" -t "$PREFIX/$name:$TAG" "$ROOT" \
        > "$STATE/build-$name.log" 2>&1 || { tail -n 30 "$STATE/build-$name.log" >&2; die "$name failed (log: $STATE/build-$name.log)"; }
    end=$(date +%s)
    say "$PREFIX/$name:$TAG built in $((end - start)) s," \
        "$(podman image inspect --format '{{.Size}}' "$PREFIX/$name:$TAG" | awk '{printf "%.0f MB", $1 / 1e6}')"
}

cmd_build() {
    cmd_bases
    local name
    for name in ${WALDO_IMAGES:-serving jobs mlflow training}; do build_image "$name"; done
}

main() {
    case "${1:-}" in
        engine) cmd_engine ;;
        bases) cmd_bases ;;
        build) cmd_build ;;
        _healthchecks) healthcheck_loop ;;
        *) echo "usage: $0 engine|bases|build" >&2; exit 2 ;;
    esac
}

main "$@"
