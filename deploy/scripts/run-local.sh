#!/usr/bin/env bash
# `make run`: a local broker (unless BROKERS is set), the demo stream, and crmflow watching it.
# Ctrl-C stops all three.
set -euo pipefail
bin=$1
brokers=${BROKERS:-}
workdir=${LOCAL_RUN_DIR:-state/local}
mkdir -p "$workdir"

children=()
cleanup() {
  ((${#children[@]})) && kill "${children[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [[ -z "$brokers" && "${BROKER:-kafka}" == mock ]]; then
  rm -f "$workdir/broker.addr"
  # Its own session, so Ctrl-C stops the processor first and the broker only afterwards.
  setsid "$bin" dev-broker --partitions 4 --address-file "$workdir/broker.addr" >/dev/null 2>&1 &
  children+=($!)
  for _ in $(seq 100); do [[ -s "$workdir/broker.addr" ]] && break; sleep 0.1; done
  brokers=$(cat "$workdir/broker.addr")
  # The dev broker keeps nothing between runs, so local state starts empty too.
  rm -rf "$workdir/state"
  # The mock cluster holds a group for a departed member's whole session: keep it short.
  export CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS=6000
  echo "crmflow: local development broker at $brokers (librdkafka's mock cluster, in memory)"
elif [[ -z "$brokers" ]]; then
  # A fresh single-node Apache Kafka for every run, and so fresh local state.
  rm -rf "$workdir/kafka" "$workdir/state"
  deploy/kafka/kafka.sh install
  setsid deploy/kafka/kafka.sh start "$workdir/kafka" >"$workdir/broker.addr" 2>"$workdir/kafka.log" &
  children+=($!)
  for _ in $(seq 1200); do [[ -s "$workdir/broker.addr" ]] && break; sleep 0.1; done
  brokers=$(head -n 1 "$workdir/broker.addr")
  [[ -n "$brokers" ]] || { echo "crmflow: the local Kafka broker did not start:" >&2; tail -n 30 "$workdir/kafka.log" >&2; exit 1; }
  "$bin" create-topics --brokers "$brokers" --partitions 4
  export CRMFLOW_KAFKA_CONSUMER__SESSION_TIMEOUT_MS=6000
  echo "crmflow: local Apache Kafka broker at $brokers (data in $workdir/kafka)"
fi

echo "crmflow: publishing the demo stream at ${RATE:-20} events/s; Ctrl-C stops"
"$bin" generate --brokers "$brokers" --rate "${RATE:-20}" &
children+=($!)
"$bin" run --config deploy/crmflow.example.toml --brokers "$brokers" --state-dir "$workdir/state" \
  --watch --report-seconds 3 --http-listen "${HTTP_LISTEN:-127.0.0.1:8080}"
