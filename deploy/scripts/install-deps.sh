#!/usr/bin/env bash
# Installs what building and testing crmflow needs, and nothing twice:
# Debian packages for the native builds (RocksDB's bindings need libclang; librdkafka
# builds with make, a C compiler, zlib and OpenSSL headers) and, on request:
#   --kafka   the jars of a real Apache Kafka broker, with Java and Maven (deploy/kafka/kafka.sh install)
set -euo pipefail

want_kafka=false
for arg in "$@"; do
  case $arg in
    --kafka) want_kafka=true ;;
    *) echo "install-deps: unknown option $arg (known: --kafka)" >&2; exit 2 ;;
  esac
done

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if $want_kafka; then
  # Idempotent and quick once done; installs java and maven itself if they are missing.
  "$(dirname "${BASH_SOURCE[0]}")/../kafka/kafka.sh" install
fi
