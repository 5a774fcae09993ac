#!/usr/bin/env bash
# buildkitd.sh builds, starts and stops a standalone BuildKit daemon
# (buildkitd with the OCI worker on runc) for kiln's BuildKit engine kind,
# rootful or rootless.
#
#   scripts/buildkitd.sh build
#       builds buildkitd and buildctl at the version scripts/tools/buildkit
#       pins (the BuildKit release agent/go.mod uses) and prints the
#       directory holding them on the last line of stdout. Built once per
#       version and kept in the dev cache; concurrent callers build once.
#   scripts/buildkitd.sh start [--rootless] --state DIR
#       starts a buildkitd whose root, socket, configuration, log and pid
#       file are all in DIR, waits until it answers, and prints its address
#       (unix://DIR/buildkitd.sock) on the last line of stdout. With
#       --rootless it runs as the system user kiln-rootless (created, with
#       /etc/subuid and /etc/subgid ranges, when missing) inside RootlessKit
#       with the host's network, so it reaches the registry on 127.0.0.1.
#   scripts/buildkitd.sh stop --state DIR
#       stops the buildkitd started with that DIR, by the pid in its pid
#       file, and waits until it has exited.
#
# The daemon's step logs are not clipped (BUILDKIT_STEP_LOG_MAX_SIZE and
# BUILDKIT_STEP_LOG_MAX_SPEED, as scripts/dev-env.sh gives dockerd), and the
# dev registry is plain HTTP to it.
#
# Environment:
#   KILN_DEV_REGISTRY  the plain-HTTP registry (default 127.0.0.1:5000)
#   KILN_DEV_CACHE     where built binaries are kept (default
#                      /var/lib/kiln-dev/cache as root, else
#                      $XDG_CACHE_HOME/kiln-dev)
#   KILN_ROOTLESS_USER the user a rootless daemon runs as (default
#                      kiln-rootless)
#
# It needs go, flock and runc; runc, rootlesskit and uidmap are installed
# with apt-get (as root) when missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=$HERE/tools/buildkit
MODULE=github.com/moby/buildkit
REGISTRY=${KILN_DEV_REGISTRY:-127.0.0.1:5000}
ROOTLESS_USER=${KILN_ROOTLESS_USER:-kiln-rootless}
# How long start waits for the daemon to answer: seconds normally, more
# on a busy machine the first time (it makes its root and probes runc).
START_TIMEOUT=${KILN_BUILDKITD_START_TIMEOUT:-120}
STOP_TIMEOUT=30
# BuildKit clips a step's output past these (2 MiB, 1 MiB/s by default);
# kiln keeps full logs. The same values scripts/dev-env.sh gives dockerd.
STEP_LOG_MAX=1073741824

log() { printf 'buildkitd.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
  cat >&2 <<'EOF'
usage: scripts/buildkitd.sh build
       scripts/buildkitd.sh start [--rootless] --state DIR
       scripts/buildkitd.sh stop --state DIR
EOF
  exit 2
}

# version prints the BuildKit version the tools module requires.
version() {
  awk '$1 == "'"$MODULE"'" { print $2; exit } $1 == "require" && $2 == "'"$MODULE"'" { print $3; exit }' "$TOOLS/go.mod"
}

cache_dir() {
  local c=${KILN_DEV_CACHE:-}
  if [ -z "$c" ]; then
    if [ "$(id -u)" = 0 ]; then c=/var/lib/kiln-dev/cache; else c=${XDG_CACHE_HOME:-$HOME/.cache}/kiln-dev; fi
  fi
  mkdir -p "$c"
  echo "$c"
}

apt_install() { # packages...
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
    die "$* missing: install them (apt-get install $*), or run this script as root"
  log "installing $*"
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed"
}

# build_bins makes sure the cache holds buildkitd and buildctl at the pinned
# version and prints their directory.
build_bins() {
  local v cache bin work start got
  v=$(version)
  case "$v" in
    v[0-9]*.[0-9]*.[0-9]*) ;;
    *) die "$TOOLS/go.mod requires $MODULE ${v:-(nothing)}, not a version like v0.34.2" ;;
  esac
  cache=$(cache_dir)
  bin=$cache/buildkit-$v
  if [ -x "$bin/buildkitd" ] && [ -x "$bin/buildctl" ]; then
    echo "$bin"
    return
  fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH"
  command -v flock >/dev/null 2>&1 || die "flock (util-linux) is not on PATH"
  # One build at a time per cache (test binaries of several packages may
  # start engines at once); whoever waited finds the work done.
  exec 9>"$cache/buildkit.lock"
  flock 9
  if [ -x "$bin/buildkitd" ] && [ -x "$bin/buildctl" ]; then
    exec 9>&-
    echo "$bin"
    return
  fi
  log "building $MODULE@$v buildkitd and buildctl (cached in $bin; minutes with cold Go caches)"
  start=$SECONDS
  work=$(mktemp -d "$cache/buildkit-build.XXXXXX")
  # Upstream's release flags (BuildKit's Dockerfile): static, pure-Go
  # resolver and user lookup. The module outside go.work decides every
  # dependency's version with its go.sum.
  (
    cd "$TOOLS"
    export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
    for cmd in buildkitd buildctl; do
      go build -trimpath -o "$work/$cmd" \
        -tags "netgo osusergo static_build" \
        -ldflags "-s -w -X $MODULE/version.Version=$v -X $MODULE/version.Revision=kiln-built-from-module-$v -X $MODULE/version.Package=$MODULE" \
        "$MODULE/cmd/$cmd" >&2 || exit 1
    done
  ) || { rm -rf "$work"; die "go build of $MODULE@$v failed (see above)"; }
  got=$(go version -m "$work/buildkitd" | awk '$2 == "'"$MODULE"'" { print $3 }')
  [ "$got" = "$v" ] || { rm -rf "$work"; die "the built buildkitd has $MODULE ${got:-(none)}, want $v"; }
  "$work/buildkitd" --version >&2 || { rm -rf "$work"; die "the built buildkitd does not run"; }
  chmod 0755 "$work" # the rootless daemon's user runs them too
  rm -rf "$bin"
  mv "$work" "$bin" # last: a directory in the cache is a finished one
  exec 9>&-
  log "built $bin in $((SECONDS - start))s"
  echo "$bin"
}

# ensure_rootless_user creates ROOTLESS_USER and its subordinate ID ranges
# when missing.
ensure_rootless_user() {
  if ! id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "user $ROOTLESS_USER is missing: run this script as root to create it"
    log "creating system user $ROOTLESS_USER"
    useradd --system --user-group --create-home --home-dir "/var/lib/$ROOTLESS_USER" \
      --shell /usr/sbin/nologin --comment "kiln rootless buildkitd" "$ROOTLESS_USER" ||
      die "useradd $ROOTLESS_USER failed"
  fi
  local f first
  for f in /etc/subuid /etc/subgid; do
    grep -q "^$ROOTLESS_USER:" "$f" 2>/dev/null && continue
    [ "$(id -u)" = 0 ] || die "$f has no range for $ROOTLESS_USER: run this script as root to add one"
    # 65536 IDs past every range already given out (at least 100000).
    first=$(awk -F: 'BEGIN { m = 100000 } NF >= 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' "$f" 2>/dev/null || echo 100000)
    log "giving $ROOTLESS_USER $f range $first:65536"
    echo "$ROOTLESS_USER:$first:65536" >>"$f"
  done
}

# pid_alive PID: whether PID runs (and is not a zombie).
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

start() {
  local rootless=$1 state=$2 bin sock addr pid deadline out
  [ -n "$state" ] || usage
  command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || apt_install runc
  local runc; runc=$(command -v runc || echo /usr/sbin/runc)
  if [ "$rootless" = 1 ]; then
    command -v rootlesskit >/dev/null 2>&1 && command -v newuidmap >/dev/null 2>&1 || apt_install rootlesskit uidmap
    ensure_rootless_user
  fi
  bin=$(build_bins | tail -n 1)

  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  sock=$state/buildkitd.sock
  addr=unix://$sock
  # A socket path longer than 107 bytes cannot be bound.
  [ "${#sock}" -le 107 ] || die "socket path $sock is longer than 107 bytes: use a shorter --state"
  if [ -f "$state/buildkitd.pid" ] && pid_alive "$(cat "$state/buildkitd.pid")"; then
    die "a buildkitd (pid $(cat "$state/buildkitd.pid")) already runs with state $state"
  fi
  rm -f "$sock" "$state/buildkitd.pid"

  # OTEL's socket defaults to /run/buildkit, which two daemons would share.
  cat >"$state/buildkitd.toml" <<EOF
# Written by scripts/buildkitd.sh.
root = "$state/root"

[grpc]
  address = ["$addr"]

[otel]
  socketPath = "$state/otel-grpc.sock"

[worker.oci]
  enabled = true
  binary = "$runc"
  gc = true

[worker.containerd]
  enabled = false

[registry."$REGISTRY"]
  http = true
  insecure = true
EOF

  local -a env=(BUILDKIT_STEP_LOG_MAX_SIZE=$STEP_LOG_MAX BUILDKIT_STEP_LOG_MAX_SPEED=$STEP_LOG_MAX
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  local -a cmd
  if [ "$rootless" = 1 ]; then
    local uid gid home
    uid=$(id -u "$ROOTLESS_USER") gid=$(id -g "$ROOTLESS_USER")
    home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
    mkdir -p "$state/run"
    chown -R "$uid:$gid" "$state"
    chmod 0755 "$state"
    setpriv --reuid="$uid" --regid="$gid" --init-groups test -x "$bin/buildkitd" ||
      die "$ROOTLESS_USER cannot run $bin/buildkitd: every directory above it must be searchable by others (chmod o+x)"
    setpriv --reuid="$uid" --regid="$gid" --init-groups test -w "$state" ||
      die "$ROOTLESS_USER cannot write $state: every directory above it must be searchable by others (chmod o+x)"
    # USER names a non-root user, so buildkitd takes its rootless defaults
    # (user namespace, no cgroup management); --net=host keeps the host's
    # network, where the registry is.
    env+=(USER="$ROOTLESS_USER" LOGNAME="$ROOTLESS_USER" HOME="$home" XDG_RUNTIME_DIR="$state/run")
    cmd=(setpriv --reuid="$uid" --regid="$gid" --init-groups
      rootlesskit --net=host --copy-up=/etc --state-dir="$state/rootlesskit"
      "$bin/buildkitd" --config "$state/buildkitd.toml")
  else
    cmd=("$bin/buildkitd" --config "$state/buildkitd.toml")
  fi

  log "starting $(if [ "$rootless" = 1 ]; then echo "rootless (as $ROOTLESS_USER) "; fi)buildkitd at $addr"
  # Its own session, so it outlives this script and the caller's signals;
  # stop ends it by pid.
  setsid env -i "${env[@]}" "${cmd[@]}" </dev/null >"$state/buildkitd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$state/buildkitd.pid"

  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      tail -n 40 "$state/buildkitd.log" >&2
      die "buildkitd exited before answering (log: $state/buildkitd.log)"
    fi
    if [ -S "$sock" ] && out=$("$bin/buildctl" --addr "$addr" --timeout 5 debug workers 2>&1) &&
      [ -n "$(tr -d '[:space:]' <<<"$out")" ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$state/buildkitd.log" >&2
      do_stop "$state" || true
      die "buildkitd did not answer on $addr within ${START_TIMEOUT}s (log: $state/buildkitd.log)"
    fi
    sleep 0.2
  done
  log "buildkitd (pid $pid) answers on $addr"
  echo "$addr"
}

do_stop() {
  local state=$1 pid deadline
  [ -f "$state/buildkitd.pid" ] || { log "no pid file in $state: nothing to stop"; return 0; }
  pid=$(cat "$state/buildkitd.pid")
  case "$pid" in '' | *[!0-9]*) die "$state/buildkitd.pid holds ${pid:-nothing}, not a pid" ;; esac
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "buildkitd (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIGTERM: killing its process group"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  fi
  rm -f "$state/buildkitd.pid"
  log "buildkitd (pid $pid) stopped"
}

[ $# -ge 1 ] || usage
sub=$1
shift
rootless=0 state=
while [ $# -gt 0 ]; do
  case "$1" in
    --rootless) rootless=1 ;;
    --state) [ $# -ge 2 ] || usage; state=$2; shift ;;
    --state=*) state=${1#--state=} ;;
    *) usage ;;
  esac
  shift
done

case "$sub" in
  build) [ -z "$state" ] && [ "$rootless" = 0 ] || usage; build_bins ;;
  start) start "$rootless" "$state" ;;
  stop) [ -n "$state" ] && [ "$rootless" = 0 ] || usage; do_stop "$state" ;;
  *) usage ;;
esac
