#!/usr/bin/env bash
# Build Waldo's images and run docker-compose.yml on a real container engine where Docker is
# missing and no registry is reachable (these machines: Debian 12, podman + runc, docker-compose
# 1.29 on podman's Docker-compatible socket; README: Deploy with docker-compose).
#
#   scripts/stack.sh engine   # install and configure podman + runc, start the Docker-API socket
#   scripts/stack.sh bases    # local base images (Debian minbase, Python 3.11), built once, cached
#   scripts/stack.sh build    # the project's images from infra/docker/, on the local bases
#   scripts/stack.sh up [ARGS]  # docker-compose.yml + infra/compose/local.yml + a generated
#                               # health-check override, `up -d ARGS` (no --build), every service
#                               # healthy; secrets in $WALDO_STACK_DIR/stack.env (made once, mode 600)
#   scripts/stack.sh smoke    # endpoints; a CPU train job through the jobs API (Ray, S3
#                             # checkpoints, MLflow run, @production); serving picks it up and
#                             # classifies a digit; --scale ray-worker=2 adds a Ray node
#   scripts/stack.sh down     # `down -v`, checks that no container or volume of the project is left
#   scripts/stack.sh engine-stop  # stop the API socket and the health-check loop `engine` started
#   scripts/stack.sh ready    # exit 0 when `ci` made the images here (podman runs), else 1
#   scripts/stack.sh ci       # what .ci/run needs for tests/integration/test_images.py: podman,
#                             # the bases and the serving, jobs and mlflow images (no socket, no
#                             # stack). Exits 0 with one message when this machine cannot run a
#                             # container at all (not root, no apt, no podman, no Debian mirror):
#                             # those tests then skip. A failed image build fails it.
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
#   WALDO_STACK_PROJECT  compose project name for up/smoke/down (waldo)
#   WALDO_STACK_TIMEOUT  seconds `up` waits for every service to turn healthy (900)
#   WALDO_POLL_INTERVAL_S, WALDO_PUBLIC_BIND   written into stack.env when it is made (5 s,
#                        127.0.0.1: netavark 1.4 cannot forward ports published on 0.0.0.0)
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
    # compose's `init: true` runs podman's container init, Debian's catatonit; without it `up`
    # fails with "container-init binary not found on the host".
    [[ -x /usr/libexec/podman/catatonit || -x /usr/bin/catatonit ]] || missing+=(catatonit)
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

# shellcheck source=scripts/stack/bases.sh
source "$ROOT/scripts/stack/bases.sh"

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
        while read -r path; do
            if [[ -d $path ]]; then volumes+=(-v "$path:$path:ro"); fi
        done < <(grep -h -o -E '(file://)?/[^ ]+' "$conf" | sed -e 's#^file://##' -e 's#/simple/*$##')
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
# --- up, smoke, down ---------------------------------------------------------------------------

PROJECT="${WALDO_STACK_PROJECT:-waldo}"
ENV_FILE="$STATE/stack.env"
HC_OVERRIDE="$STATE/healthchecks.override.yml"

compose_files() {
    DOCKER_HOST="unix://$SOCKET" docker-compose -p "$PROJECT" --project-directory "$ROOT" \
        --env-file "$ENV_FILE" -f "$ROOT/docker-compose.yml" -f "$ROOT/infra/compose/local.yml" "$@"
}
compose() { compose_files -f "$HC_OVERRIDE" "$@"; }

# Secrets for this machine's stack, made once and kept outside the repository (postgres keeps
# the first password it sees, so they must not change while its volume lives; `down` removes
# the volumes and this file together). Hex only (POSTGRES_PASSWORD goes into a URI).
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
write_env_file() {
    [[ -s $ENV_FILE ]] && return
    mkdir -p "$STATE"
    (
        umask 077
        cat > "$ENV_FILE.part" <<EOF
# Written by scripts/stack.sh up: secrets for the local stack (never commit; removed by down).
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=waldo-admin
MINIO_ROOT_PASSWORD=$(secret)
WALDO_S3_ACCESS_KEY=waldo
WALDO_S3_SECRET_KEY=$(secret)
RAY_AUTH_TOKEN=$(secret)
WALDO_JOBS_TOKEN=$(secret)
# serving polls the registry for cnn@production this often (compose's default: 30 s)
WALDO_POLL_INTERVAL_S=${WALDO_POLL_INTERVAL_S:-5}
# serving and the jobs API on this host only. Also a must with netavark 1.4 (podman 4.3): a
# port published on host IP 0.0.0.0 (compose's default here) gets DNAT rules for destination
# 0.0.0.0/32, which match nothing, so nothing reaches it. Set an address of this host to share.
WALDO_PUBLIC_BIND=${WALDO_PUBLIC_BIND:-127.0.0.1}
EOF
        mv "$ENV_FILE.part" "$ENV_FILE"
    )
    say "wrote $ENV_FILE (random secrets, mode 600)"
}

# podman 4.3's Docker-compatible API joins an exec-form health test (["CMD", args...]) with
# spaces and splits it again on whitespace (containers/podman#26519, fixed long after 4.3), so
# `python -c "import urllib.request as u; ..."` runs as `python -c import`. One string
# (["CMD-SHELL", "..."]) survives. This override is generated from the merged configuration on
# every `up`, so it cannot drift from docker-compose.yml: the same arguments, shell-quoted, run
# by /bin/sh; interval, timeout, retries and start period stay the files' own.
# shellcheck disable=SC2016  # Python, not shell
HC_REWRITE='
import shlex, sys, yaml
config = yaml.safe_load(sys.stdin)
services = {}
for name, service in sorted((config.get("services") or {}).items()):
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test and test[0] == "CMD":
        shell = shlex.join(test[1:]).replace("$", "$$")  # compose interpolates this file too
        services[name] = {"healthcheck": {"test": ["CMD-SHELL", shell]}}
with open(sys.argv[1], "w") as out:
    out.write("# Generated by scripts/stack.sh up from `docker-compose config`; do not edit.\n"
              "# podman 4.3 splits exec-form health tests received over its Docker API on spaces\n"
              "# (containers/podman#26519). The one change: each [\"CMD\", args...] test becomes\n"
              "# [\"CMD-SHELL\", the same args shell-quoted]; interval, timeout, retries stay.\n"
              "# Rewritten: " + (", ".join(services) or "none") + "\n")
    yaml.safe_dump({"services": services}, out, sort_keys=True, width=1000)
'
write_healthcheck_override() {
    # the merged configuration holds the secrets: piped, never written out
    compose_files config | python3 -c "$HC_REWRITE" "$HC_OVERRIDE" \
        || die "could not generate $HC_OVERRIDE"
}

# "name|status" for each of the project's containers (podman's own listing: compose's `ps`
# asks every container's health over the API, slowly)
project_containers() {
    podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}|{{.Status}}|{{.ID}}'
}

# Until every container is healthy (or, without a health check, exited 0), printing each one's
# time to healthy as it happens: the order is the one the health-gated depends_on imposes.
# $1: the pid of a running `compose up -d`, which has to finish too.
wait_healthy() {
    local up_pid=${1:-} start=$SECONDS timeout=${WALDO_STACK_TIMEOUT:-900} name status id what
    declare -A seen=()  # container ids already reported (or healthy before we began)
    while IFS='|' read -r name status id; do
        [[ $status == *"(healthy)"* || $status == "Exited (0)"* ]] && seen[$id]=1
    done < <(project_containers)
    while true; do
        local pending=0
        while IFS='|' read -r name status id; do
            [[ -n $name ]] || continue
            case $status in
                *"(healthy)"*|"Exited (0)"*)
                    what=healthy; [[ $status == Exited* ]] && what=finished
                    [[ -n ${seen[$id]:-} ]] || { seen[$id]=1; say "$(printf '%-22s %-9s after %4d s' \
                        "$name" "$what" $((SECONDS - start)))"; } ;;
                *"(unhealthy)"*|Exited*)
                    say "$name: $status"; podman logs --tail 30 "$name" >&2 || true
                    die "$name failed (podman healthcheck run $name; podman logs $name)" ;;
                *) pending=$((pending + 1)) ;;
            esac
        done < <(project_containers)
        if [[ -n $up_pid ]] && ! kill -0 "$up_pid" 2>/dev/null; then
            wait "$up_pid" || die "docker-compose up failed"
            up_pid=""
        fi
        [[ -z $up_pid && $pending -eq 0 ]] && return
        (( SECONDS - start < timeout )) || die "not healthy after $timeout s: $(project_containers | tr '\n' ' ')"
        sleep 2
    done
}

timed() {  # timed LABEL command...: run it, then print its wall time
    local label=$1 start=$SECONDS; shift
    "$@"
    say "$(printf '%-34s %4d s   (load %s)' "$label" $((SECONDS - start)) "$(cut -d' ' -f1-3 /proc/loadavg)")"
}

ensure_images() {
    cmd_bases
    local name
    for name in serving jobs mlflow training; do
        have_image "$PREFIX/$name:$TAG" || build_image "$name"
    done
}

cmd_up() {
    local start=$SECONDS
    timed "engine + bases + images" ensure_images
    timed "env file" write_env_file
    timed "health-check override" write_healthcheck_override
    say "docker-compose -p $PROJECT --env-file $ENV_FILE -f docker-compose.yml -f infra/compose/local.yml -f $HC_OVERRIDE up -d $*"
    # no --build: `scripts/stack.sh build` made the images with the volumes pip needs here
    compose up -d "$@" > "$STATE/up.log" 2>&1 &
    timed "up -d, every service healthy" wait_healthy $!
    say "stack up in $((SECONDS - start)) s; compose: DOCKER_HOST=unix://$SOCKET docker-compose -p $PROJECT" \
        "--env-file $ENV_FILE -f docker-compose.yml -f infra/compose/local.yml -f $HC_OVERRIDE ..."
}

cmd_down() {
    socket_alive || start_socket
    [[ -f $ENV_FILE ]] || { say "no $ENV_FILE: nothing was brought up by stack.sh"; }
    if [[ -f $ENV_FILE && -f $HC_OVERRIDE ]]; then
        timed "down -v" compose down -v --remove-orphans
    fi
    local left
    left=$(project_containers)
    [[ -z $left ]] || die "containers left: $left"
    left=$(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [[ -z $left ]] || die "volumes left: $left"
    rm -f "$ENV_FILE" "$HC_OVERRIDE"  # the secrets go with the volumes that used them
    say "down: no container or volume of project $PROJECT left"
}

# Stop what `engine` started (the API socket, the health-check loop), by their pids.
cmd_engine_stop() {
    local pidfile pid
    for pidfile in "$STATE/healthchecks.pid" "$STATE/podman-service.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            say "stopping pid $pid ($(basename "$pidfile" .pid))"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$pidfile"
    done
    rm -f "$SOCKET"
}

# .ci/run's part: can this machine run containers at all (and make the local bases: Debian's
# packages through its mirror)? Then build what the image tests use.
can_run_containers() {
    install_packages && configure_podman && debian_base \
        && podman run --rm --network none "$DEBIAN_IMAGE" true && python_base
}

cmd_ci() {
    local start=$SECONDS log="$STATE/ci-probe.log"
    mkdir -p "$STATE"
    if ! ( can_run_containers ) > "$log" 2>&1; then
        say "this machine cannot run containers ($(tail -n 1 "$log")); the image tests will skip"
        return 0
    fi
    local name
    for name in ${WALDO_IMAGES:-serving jobs mlflow}; do build_image "$name"; done
    say "engine, bases and images (${WALDO_IMAGES:-serving jobs mlflow}) ready in $((SECONDS - start)) s"
}

# After `ci`: whether this machine runs containers and has the images it built (.ci/run then
# brings the whole stack up, smokes it and takes it down).
cmd_ready() {
    command -v podman >/dev/null && have_image "$PREFIX/serving:$TAG"
}

# shellcheck source=scripts/stack/smoke.sh
source "$ROOT/scripts/stack/smoke.sh"

main() {
    case "${1:-}" in
        engine) cmd_engine ;;
        bases) cmd_bases ;;
        build) cmd_build ;;
        up) shift; cmd_up "$@" ;;
        smoke) cmd_smoke ;;
        down) cmd_down ;;
        engine-stop) cmd_engine_stop ;;
        ci) cmd_ci ;;
        ready) cmd_ready ;;
        _healthchecks) healthcheck_loop ;;
        *) echo "usage: $0 engine|bases|build|up|smoke|down|engine-stop|ci|ready" >&2; exit 2 ;;
    esac
}

main "$@"
