# Shared by the Docker scenarios (scripts/cluster/scenario-*): a static image FROM scratch,
# three hosts on a private network, each with its own address and data volume, formed with
# init + join; load from this machine through every host's entry point; invariants.
# Source it; do not run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

IMAGE=halley-node:scenario
NET=halley-scenario
SUBNET=172.30.99
PORT=8080
HOSTS=(n1 n2 n3)
WORK="$(mktemp -d /tmp/halley-scenario.XXXXXX)"
TARGET="${CARGO_TARGET_DIR:-target}"
LOAD_PID=""

ip_of() { echo "$SUBNET.$((10 + ${1#n}))"; }

say() { echo "-- $*"; }

fail() {
  echo "FAILED: $*" >&2
  for h in "${HOSTS[@]}"; do
    echo "---- last log lines of $h" >&2
    docker logs --tail 30 "halley-$h" 2>&1 | sed 's/^/   /' >&2 || true
  done
  exit 1
}

cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  for h in "${HOSTS[@]}"; do
    docker rm -f "halley-$h" >/dev/null 2>&1 || true
    docker volume rm -f "halley-$h-data" >/dev/null 2>&1 || true
  done
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Builds the static binaries and the image (cached by Docker when nothing changed).
build_image() {
  scripts/lib/ensure-packages musl-gcc:musl-tools >&2
  rustup target add x86_64-unknown-linux-musl >&2 2>&1
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target x86_64-unknown-linux-musl \
    -p halley-node -p halley-tests --bin halley-node --bin halley-test-service >&2
  cargo build --release -p halley-tests --bin halley-load >&2
  local ctx="$WORK/image"
  mkdir -p "$ctx"
  cp "$TARGET/x86_64-unknown-linux-musl/release/halley-node" "$TARGET/x86_64-unknown-linux-musl/release/halley-test-service" "$ctx/"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY halley-node halley-test-service /
ENV HALLEY_DATA_DIR=/data PATH=/
ENTRYPOINT ["/halley-node"]
DOCKERFILE
  docker build -q -t "$IMAGE" "$ctx" >/dev/null
}

# halley-node on a host: hn n1 status
hn() {
  local host="$1"
  shift
  docker exec "halley-$host" /halley-node "$@"
}

run_host() {
  local h="$1"
  docker run -d --name "halley-$h" --hostname "$h" --network "$NET" --ip "$(ip_of "$h")" \
    -v "halley-$h-data:/data" "$IMAGE" run --service-address 0.0.0.0 >/dev/null
}

# Three hosts: n1 inits, n2 and n3 join with its token as admins (the scenarios coordinate from
# any of them).
start_cluster() {
  docker network create --subnet "$SUBNET.0/24" "$NET" >/dev/null
  local token
  token=$(docker run --rm --network "$NET" --ip "$(ip_of n1)" -v halley-n1-data:/data "$IMAGE" \
    init --name n1 --listen "$(ip_of n1):7946" --token-role admin --token-uses 2 | tail -n 1)
  run_host n1
  wait_for "n1 answers" 20 hn n1 status
  for h in n2 n3; do
    docker run --rm --network "$NET" --ip "$(ip_of "$h")" -v "halley-$h-data:/data" "$IMAGE" \
      join "$token" --name "$h" --listen "$(ip_of "$h"):7946" >/dev/null
    run_host "$h"
  done
  wait_for "3 nodes alive on every host" 30 all_alive 3
}

all_alive() {
  local want="$1" h
  for h in "${HOSTS[@]}"; do
    [ "$(hn "$h" status 2>/dev/null | grep -c ' alive ')" -eq "$want" ] || return 1
  done
}

# wait_for WHAT SECONDS COMMAND...
wait_for() {
  local what="$1" secs="$2"
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.5
  done
}

# config NAME [ENV_TOML] [ROLLOUT_TOML]: writes /NAME.toml into every host.
config() {
  local name="$1" env="${2:-}" rollout="${3:-}"
  cat > "$WORK/$name.toml" <<TOML
[service.web]
command = ["/halley-test-service"]
listen = ":$PORT"
keep_warm = "1m"
env = { $env }
[service.web.health]
http = "/health"
interval = "200ms"
start_period = "10s"
[service.web.stop]
drain_timeout = "3s"
[service.web.rollout]
order = ["n1", "n2", "n3"]
drain_wait = "1s"
$rollout
TOML
  grep -q '^bake' "$WORK/$name.toml" || echo 'bake = "3s"' >> "$WORK/$name.toml"
  local h
  for h in "${HOSTS[@]}"; do
    docker cp "$WORK/$name.toml" "halley-$h:/$name.toml" >/dev/null 2>&1 || true
  done
}

# deploy FROM_HOST CONFIG VERSION [extra args]
deploy() {
  local from="$1" cfg="$2" version="$3"
  shift 3
  HALLEY_PLAIN=1 docker exec -e HALLEY_PLAIN=1 "halley-$from" /halley-node deploy web \
    -c "/$cfg.toml" --version "$version" --artifact /halley-test-service "$@"
}

entries() {
  local h out=()
  for h in "$@"; do out+=("$(ip_of "$h"):$PORT"); done
  echo "${out[@]}"
}

# Load from this machine through the given hosts' entry points.
load_start() {
  rm -f "$WORK/stop" "$WORK/load.out"
  # shellcheck disable=SC2046
  "$TARGET/release/halley-load" --until "$WORK/stop" $(entries "$@") > "$WORK/load.out" &
  LOAD_PID=$!
  sleep 1
}

# Stops the load and prints its totals. `clean`: fails unless 0 failed and 0 connection errors;
# `answered`: fails on any connection error (5xx answers from a bad release are expected in
# fault scenarios, and reported).
load_stop_expect() {
  local pattern='^ok=[1-9][0-9]* failed=0 conn_errors=0$' what="requests failed"
  if [ "$1" = answered ]; then
    pattern='^ok=[1-9][0-9]* failed=[0-9]* conn_errors=0$'
    what="requests got no answer"
  fi
  touch "$WORK/stop"
  wait "$LOAD_PID" || true
  LOAD_PID=""
  cat "$WORK/load.out"
  grep -q "$pattern" "$WORK/load.out" \
    || fail "$what through hosts that stayed up: $(head -1 "$WORK/load.out")"
}

# Invariant: every listed host serves exactly one committed release, VERSION, from a healthy
# active slot, and no rollout of the service is left unfinished.
expect_serving() {
  local version="$1" h
  shift
  for h in "$@"; do
    local json
    json=$(hn "$h" services --json) || fail "$h does not answer"
    # Plain string matching: `cmd | grep -q` under pipefail fails when grep stops reading early.
    [[ $json == *"\"committed\": \"$version\""* ]] || fail "$h has not committed $version: $json"
    local active
    active=$(grep -A8 '"role": "active"' <<<"$json")
    [[ $active == *'"health": "healthy"'* ]] || fail "$h has no healthy active slot: $active"
    [[ $active == *"\"version\": \"$version\""* ]] || fail "$h's active slot does not run $version"
    # Gossip takes a moment to bring the finished state from the node that finished it (a
    # host may show its own journal's "paused" for a second after another node resumed it).
    local deadline=$((SECONDS + 10))
    until finished_on "$h"; do
      [ "$SECONDS" -lt "$deadline" ] \
        || fail "$h reports an unfinished rollout: $(hn "$h" rollout status web)"
      sleep 0.5
    done
  done
  say "invariant holds on $*: $version committed, served by a healthy active slot, no unfinished rollout"
}

# Whether HOST sees no rollout of web left unfinished.
finished_on() {
  case "$(phase_on "$1")" in
    running | paused | rolling-back | committing) return 1 ;;
  esac
}

# The rollout phase as HOST sees it (from gossip): running, paused, rolled-back, ...
phase_on() {
  hn "$1" rollout status web 2>/dev/null | head -1 | sed -E 's/^[^:]*: ([a-z-]+) .*/\1/'
}

# Waits until HOST reports that host TARGET's step is STEP.
wait_step() {
  local host="$1" target="$2" step="$3"
  wait_for "$target reaching $step (seen from $host)" 60 \
    sh -c "docker exec halley-$host /halley-node rollout status web | grep -E '^ +$target +$step'"
}

phase_is() { [ "$(phase_on "$1")" = "$2" ]; }

# Waits until HOST sees the rollout in PHASE (gossip takes a moment to carry it).
wait_phase() {
  wait_for "the rollout reaching $2 (seen from $1)" 20 phase_is "$1" "$2"
}

# Whether HOST's `rollout status web` mentions TEXT.
rollout_mentions() {
  local out
  out=$(hn "$1" rollout status web 2>/dev/null) || return 1
  [[ $out == *"$2"* ]]
}

# Whether HOST sees TARGET in STATE (alive, suspect, dead, left, draining).
# The STATE column is found by its header, so that a column added to the table does not move it.
sees() { [ "$(hn "$1" status 2>/dev/null | awk -v t="$2" '$1 == "NAME" {for (i = 1; i <= NF; i++) if ($i == "STATE") c = i} c && $1 == t {print $c}')" = "$3" ]; }
