#!/usr/bin/env bash
# dev-env.sh makes sure this machine has what kiln's `make run`, `make test` and
# `make bench` need: a Docker engine that answers and a registry on
# 127.0.0.1:5000. On Debian/Ubuntu, as root, it installs what is missing
# (docker.io, docker-registry, busybox-static, rootlesskit, uidmap, chromium, qemu-user-static) and starts dockerd and the
# registry when none answers. It never touches an engine or registry it did
# not start; a dockerd it started whose environment lacks BuildKit's step log
# settings (an older dev-env's) is restarted with them. What it starts is
# recorded by pid under $KILN_DEV_STATE and stopped by
# `scripts/dev-env.sh down`, never by name.
set -euo pipefail

STATE=${KILN_DEV_STATE:-}
if [ -z "$STATE" ]; then
  if [ "$(id -u)" = 0 ]; then STATE=/var/lib/kiln-dev; else STATE=${XDG_STATE_HOME:-$HOME/.local/state}/kiln-dev; fi
fi
REGISTRY_ADDR=${KILN_DEV_REGISTRY:-127.0.0.1:5000}
mkdir -p "$STATE"

log() { printf 'dev-env: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose) # tests/compose_test.go
command -v git >/dev/null 2>&1 || need_pkgs+=(git) # Git URL contexts (the agent fetches them) and tests/buildctx_test.go
command -v rootlesskit >/dev/null 2>&1 || need_pkgs+=(rootlesskit) # rootless buildkitd (scripts/buildkitd.sh)
command -v newuidmap >/dev/null 2>&1 || need_pkgs+=(uidmap)        # rootless buildkitd's user namespace
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium fonts-dejavu-core) # tests/ui_test.go (headless, driven by chromedp)
dpkg -s qemu-user-static >/dev/null 2>&1 || need_pkgs+=(qemu-user-static binfmt-support) # tests/platforms_test.go (arm64 under emulation)

install_missing() {
  [ ${#need_pkgs[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing packages: ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]}) or run this as root on Debian/Ubuntu"
  fi
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start services: we start what we need ourselves.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
  rm -f /usr/sbin/policy-rc.d; trap - EXIT
}

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# BuildKit (dockerd's builder) clips a step's output past 2 MiB or 200 KiB/s
# unless its daemon's environment lifts the limits; kiln keeps full logs.
# 1 GiB, not -1: Docker 20.10's BuildKit clips everything at -1
# (agent/engine/steplog.go).
STEP_LOG_ENV=(BUILDKIT_STEP_LOG_MAX_SIZE=1073741824 BUILDKIT_STEP_LOG_MAX_SPEED=1073741824)

# has_step_log_env PID: the process's environment lifts BuildKit's limits.
has_step_log_env() {
  local environ kv
  environ=$(tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null) || return 1
  for kv in "${STEP_LOG_ENV[@]}"; do grep -qxF -- "$kv" <<<"$environ" || return 1; done
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

ensure_engine() {
  local ours=""
  [ -f "$STATE/dockerd.pid" ] && pgrep -F "$STATE/dockerd.pid" -x dockerd >/dev/null 2>&1 && ours=$(cat "$STATE/dockerd.pid")
  if engine_answers && [ -n "$ours" ] && ! has_step_log_env "$ours"; then
    # Started by an older dev-env: BuildKit reads the limits only at start.
    log "restarting the dockerd dev-env started (pid $ours): its environment lacks ${STEP_LOG_ENV[*]}"
    stop_pidfile "$STATE/dockerd.pid"
    wait_for 30 "engine stopped" bash -c "! docker version >/dev/null 2>&1" || die "the engine still answers after dockerd (pid $ours) stopped"
  fi
  if engine_answers; then
    log "docker engine answers ($(docker version --format '{{.Server.Version}}'))"
    if [ -z "$ours" ]; then
      local pid
      for pid in $(pgrep -x dockerd 2>/dev/null); do
        has_step_log_env "$pid" || log "warning: dockerd (pid $pid) was not started by dev-env and its environment lacks ${STEP_LOG_ENV[*]}: BuildKit clips loud build steps' output"
      done
    fi
    return 0
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"; fi
  [ "$(id -u)" = 0 ] || die "no docker engine answers on the default socket and this is not root: start dockerd or set DOCKER_HOST"
  # A dockerd or containerd killed without cleaning up leaves its pid file;
  # once the pid is reused, dockerd waits for that unrelated process. No
  # engine answers, so the files are stale.
  for f in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    [ -f "$f" ] && ! pgrep -F "$f" -x 'dockerd|containerd' >/dev/null 2>&1 && rm -f "$f"
  done
  log "starting dockerd (log: $STATE/dockerd.log)"
  setsid env "${STEP_LOG_ENV[@]}" dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 < /dev/null &
  wait_for 60 "docker engine" engine_answers || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not answer within 60s"; }
  log "docker engine started (pid $(cat "$STATE/dockerd.pid"))"
}

registry_answers() { curl -fs -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"; }

ensure_registry() {
  if registry_answers; then log "registry answers on $REGISTRY_ADDR"; return 0; fi
  mkdir -p "$STATE/registry"
  cat > "$STATE/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
  log "starting docker-registry on $REGISTRY_ADDR (log: $STATE/registry.log)"
  setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 < /dev/null &
  echo $! > "$STATE/registry.pid"
  wait_for 30 "registry" registry_answers || { tail -20 "$STATE/registry.log" >&2; die "registry did not answer within 30s"; }
}

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping pid $pid ($f)"
    kill "$pid"
    wait_for 30 "exit" bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

BASE_IMAGE=${KILN_DEV_BASE_IMAGE:-$REGISTRY_ADDR/kiln/busybox:1}

# ensure_base makes the example base image (static busybox, no public
# registry needed) and pushes it to the local registry, unless it is there.
ensure_base() {
  local repo=${BASE_IMAGE#*/}; local name=${repo%:*}; local tag=${repo##*:}
  if curl -fs -o /dev/null --max-time 5 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://$REGISTRY_ADDR/v2/$name/manifests/$tag"; then
    log "base image $BASE_IMAGE is in the registry"; return 0
  fi
  local root; root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for app in $("$root/bin/busybox" --list); do [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  docker push "$BASE_IMAGE" >/dev/null
  log "base image $BASE_IMAGE made from /bin/busybox and pushed"
}

case "${1:-up}" in
  up)
    install_missing
    ensure_engine
    ensure_registry
    ;;
  base)
    ensure_base
    ;;
  down)
    stop_pidfile "$STATE/registry.pid"
    stop_pidfile "$STATE/dockerd.pid"
    ;;
  *) die "usage: $0 [up|down|base]" ;;
esac
