#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft: one JVM is broker and controller) for
# crmflow's local and CI tests, run from the release jars that pom.xml pins.
#
#   kafka.sh install     resolve the broker's jars once per machine into a cache outside the
#                        clone (installs java and maven with apt-get if missing)
#   kafka.sh start DIR   format a fresh store in DIR, start the broker on free loopback ports,
#                        print its bootstrap address (127.0.0.1:PORT) as the only stdout line,
#                        then stay in the foreground until SIGTERM/SIGINT, which stop the
#                        broker cleanly (exit 0)
#   kafka.sh tool CLASS [ARGS...]
#                        run one of Kafka's command-line tools on the same jars, e.g.
#                        `kafka.sh tool TopicCommand --bootstrap-server ADDR --list`
#                        (NAME means org.apache.kafka.tools.NAME, e.g. consumer.ConsoleConsumer);
#                        logs WARN to stderr
#   kafka.sh classpath   print the java class path of the jars
#
# Environment (all optional; none starts with CRMFLOW_, which crmflow reads as its configuration):
#   KAFKA_CACHE_DIR      cache dir (default ~/.cache/crmflow/kafka-<version>)
#   KAFKA_PORT           fixed broker port instead of a free one
#   KAFKA_HEAP_OPTS      JVM heap flags (default -Xmx768m -Xms256m)
#   KAFKA_JVM_PERFORMANCE_OPTS
#                        the broker's GC and JIT flags, as in Kafka's own scripts (default
#                        -XX:+UseSerialGC -XX:TieredStopAtLevel=1: quickest start, for tests;
#                        benchmarks pass Kafka's production defaults, G1 and the full JIT)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker to answer (default 60)
#   KAFKA_PARENT_PID  stop when this process is gone (test binaries set it)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom=$here/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n 1)
[[ -n $version ]] || { echo "kafka.sh: no <kafka.version> in $pom" >&2; exit 1; }
home=${KAFKA_CACHE_DIR:-$HOME/.cache/crmflow/kafka-$version}
libs=$home/libs
marker=$home/.installed # holds the sha256 of the pom the libs were resolved from

# Nothing but the bootstrap address may reach stdout: callers read it as one line.
log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# --- install ----------------------------------------------------------------------------

pom_digest() { sha256sum "$pom" | cut -d ' ' -f 1; }
installed() { [[ -f $marker && $(<"$marker") == "$(pom_digest)" && -d $libs ]]; }

# java runs the broker; mvn only resolves jars. Debian's JRE package is enough: its module
# image includes jdk.compiler, which `java File.java` (WaitForBroker) needs.
ensure_tools() {
  local pkgs=()
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  ((${#pkgs[@]})) || return 0
  log "installing ${pkgs[*]} (apt-get)"
  local sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 </dev/null
}

cmd_install() {
  installed && return 0
  mkdir -p "$home"
  # A lock, because several `start`s may race to install on a fresh machine (parallel CI jobs).
  (
    flock 9
    installed && exit 0
    ensure_tools
    log "resolving Kafka $version jars into $libs (once per machine)"
    local tmp=$home/libs.tmp.$$
    rm -rf "$tmp"
    if ! mvn -B -q -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$home/install.log" 2>&1 </dev/null; then
      tail -n 40 "$home/install.log" >&2
      rm -rf "$tmp"
      die "mvn could not resolve the Kafka jars (full log: $home/install.log)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar in $tmp"
    rm -rf "$libs"
    mv "$tmp" "$libs"
    pom_digest >"$marker" # written last: a marker means a complete install
    local jars=("$libs"/*.jar)
    log "installed Kafka $version (${#jars[@]} jars)"
  ) 9>"$home/.lock"
}

# --- start ------------------------------------------------------------------------------

# Two distinct free loopback ports (broker, controller). Both sockets are held open at once so
# the kernel cannot hand out the same port twice; it assigns ephemeral ports at random, so two
# concurrent starts practically never collide, and a collision is retried anyway (see below).
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])'
  else # no python: random high ports that nothing answers on
    local found=() p
    while ((${#found[@]} < 2)); do
      p=$((20000 + RANDOM % 30000))
      [[ ${found[0]:-} == "$p" ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || found+=("$p")
    done
    echo "${found[@]}"
  fi
}

write_config() { # DIR PORT CONTROLLER_PORT
  cat >"$1/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh for one local test broker; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$1/data

# One node: every internal topic has one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Few partitions for the internal topics: they are created faster (defaults: 50 each).
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
share.coordinator.state.topic.num.partitions=4

# Tests: no wait before the first rebalance, short sessions allowed, topics made explicitly.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
num.partitions=1
# Keep every record: test and demo records carry event-time stamps from 2024, which the default
# 7-day retention deletes within 30 s of start (and outputs keep their inputs' stamps).
log.retention.ms=-1
# The log cleaner looks for work every second (default 15 s): tests of compacted changelogs wait
# seconds, not minutes, for it.
log.cleaner.backoff.ms=1000

# A small machine (2 cores): fewer threads.
num.network.threads=2
num.io.threads=4
EOF
}

broker_pid='' waiter_pid='' watchdog_pid=''

# Stop the broker (TERM: Kafka's shutdown hook flushes and closes cleanly), bounded at 30 s.
stop_broker() {
  if [[ -n $waiter_pid ]]; then kill "$waiter_pid" 2>/dev/null || true; fi
  if [[ -n $broker_pid ]] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do
      kill -0 "$broker_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$broker_pid" 2>/dev/null; then
      log "broker did not stop within 30 s; killing it"
      kill -KILL "$broker_pid" 2>/dev/null || true
    fi
  fi
  if [[ -n $broker_pid ]]; then
    wait "$broker_pid" 2>/dev/null || true
    rm -f "$dir/broker.pid"
  fi
  broker_pid=''
}

cleanup() {
  stop_broker
  if [[ -n $watchdog_pid ]]; then kill "$watchdog_pid" 2>/dev/null || true; fi
}

broker_failed() { # MESSAGE: report it with the log's errors and its last lines
  log "error: $1"
  [[ -f $dir/broker.log ]] || return 0
  if grep -q -E '^\[[^]]*\] (ERROR|FATAL) ' "$dir/broker.log"; then
    echo "----- first errors in $dir/broker.log -----" >&2
    grep -m 5 -A 2 -E '^\[[^]]*\] (ERROR|FATAL) ' "$dir/broker.log" >&2 || true
  fi
  echo "----- last lines of $dir/broker.log -----" >&2
  tail -n 30 "$dir/broker.log" >&2
  echo "-----" >&2
}

# JVM flags for the broker and the tools. Serial GC and C1 only: quickest JVM start and least
# CPU on a small machine; a test broker never needs peak throughput (a benchmark sets
# KAFKA_JVM_PERFORMANCE_OPTS). No perf-data file in /tmp.
set_jvm_opts() {
  # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of flags on purpose
  local heap=(${KAFKA_HEAP_OPTS:--Xmx768m -Xms256m})
  # shellcheck disable=SC2206 # likewise
  local performance=(${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1})
  jvm_opts=("${heap[@]}" "${performance[@]}" -XX:-UsePerfData
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$here/log4j2.yaml")
}

# One attempt: format DIR, launch, wait until it answers. 0 = up, 1 = failed, 3 = port taken.
try_start() { # PORT CONTROLLER_PORT
  local port=$1 cport=$2
  write_config "$dir" "$port" "$cport"

  # A fresh store each start: tests want an empty cluster, and the ports change anyway.
  rm -rf "$dir/data"
  local cluster_id
  cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  # Kafka's own random ids never start with '-' (the CLI would read a flag).
  [[ $cluster_id == -* ]] && cluster_id=A${cluster_id:1}
  if ! java "${jvm_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
    --config "$dir/server.properties" --cluster-id "$cluster_id" \
    >"$dir/format.log" 2>&1 </dev/null; then
    cat "$dir/format.log" >&2
    broker_failed "could not format the KRaft store in $dir/data"
    return 1
  fi

  java "${jvm_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/broker.log" 2>&1 </dev/null &
  broker_pid=$!
  echo "$broker_pid" >"$dir/broker.pid"

  # Ready = a client gets an answer to a metadata request (the broker opens its client
  # listener only once the controller has unfenced it). Run in the background so a SIGTERM
  # is handled at once, and watch the broker meanwhile.
  java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -cp "$libs/*" \
    "$here/WaitForBroker.java" "127.0.0.1:$port" "${KAFKA_START_TIMEOUT:-60}" \
    >"$dir/wait.log" 2>&1 </dev/null &
  waiter_pid=$!
  while kill -0 "$waiter_pid" 2>/dev/null; do
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    kill "$waiter_pid" 2>/dev/null || true
    wait "$waiter_pid" 2>/dev/null || true
    waiter_pid=''
    local rc=0
    wait "$broker_pid" 2>/dev/null || rc=$?
    broker_pid=''
    if grep -q 'Address already in use' "$dir/broker.log"; then
      return 3
    fi
    broker_failed "the broker exited (status $rc) before it answered"
    return 1
  fi
  local wrc=0
  wait "$waiter_pid" || wrc=$?
  waiter_pid=''
  if ((wrc != 0)); then
    cat "$dir/wait.log" >&2
    broker_failed "the broker did not answer on 127.0.0.1:$port within ${KAFKA_START_TIMEOUT:-60} s"
    stop_broker
    return 1
  fi
  return 0
}

cmd_start() {
  [[ $# -eq 1 ]] || usage
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  cmd_install
  command -v java >/dev/null 2>&1 || ensure_tools

  set_jvm_opts
  rm -f "$dir/broker.pid" "$dir/bootstrap" # stale ones from an earlier run would mislead
  trap cleanup EXIT
  # Asked to stop, at any point: the EXIT trap stops the broker; that is a clean exit.
  trap 'exit 0' TERM INT HUP

  # If this script is SIGKILLed no trap runs: a tiny watchdog then stops the orphaned broker.
  # It also stops the script (and so the broker) once KAFKA_PARENT_PID is gone: a test
  # binary that started this broker for its whole run cannot always stop it itself.
  (
    while kill -0 "$$" 2>/dev/null; do
      if [[ -n ${KAFKA_PARENT_PID:-} ]] && ! kill -0 "$KAFKA_PARENT_PID" 2>/dev/null; then
        kill -TERM "$$" 2>/dev/null
      fi
      sleep 1
    done
    [[ -f $dir/broker.pid ]] && kill -TERM "$(<"$dir/broker.pid")" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  watchdog_pid=$!

  local attempt port cport rc
  for attempt in 1 2 3; do
    read -r port cport <<<"$(free_ports)"
    if [[ -n ${KAFKA_PORT:-} ]]; then
      port=$KAFKA_PORT
      [[ $cport == "$port" ]] && read -r _ cport <<<"$(free_ports)"
    fi
    rc=0
    try_start "$port" "$cport" || rc=$?
    ((rc == 0)) && break
    if ((rc == 3)) && [[ -z ${KAFKA_PORT:-} ]] && ((attempt < 3)); then
      log "port $port or $cport was taken meanwhile; retrying with other ports"
      continue
    fi
    ((rc == 3)) && broker_failed "port $port or $cport is already in use"
    exit 1
  done

  echo "127.0.0.1:$port" >"$dir/bootstrap"
  echo "127.0.0.1:$port"
  log "broker up on 127.0.0.1:$port (Kafka $version, logs in $dir/broker.log); stop with SIGTERM"

  # Block until a signal (trap above) or the broker dies by itself (an error).
  rc=0
  wait "$broker_pid" || rc=$?
  broker_pid=''
  broker_failed "the broker exited unexpectedly (status $rc)"
  exit 1
}

# --- tool -------------------------------------------------------------------------------

cmd_tool() {
  (($# >= 1)) || usage
  local class=$1
  shift
  # Bare or relative names live under org.apache.kafka.tools (consumer.ConsoleConsumer, …).
  [[ $class == org.* || $class == kafka.* ]] || class=org.apache.kafka.tools.$class
  cmd_install
  exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
    "-Dlog4j2.configurationFile=$here/log4j2-tools.yaml" -cp "$libs/*" "$class" "$@"
}

case ${1:-} in
  install) shift; (($# == 0)) || usage; cmd_install ;;
  start) shift; cmd_start "$@" ;;
  tool) shift; cmd_tool "$@" ;;
  classpath) shift; cmd_install; echo "$libs/*" ;;
  *) usage ;;
esac
