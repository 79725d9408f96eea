#!/usr/bin/env bash
# Installs what building and testing crmflow needs, and nothing twice:
# Debian packages for the native builds (RocksDB's bindings need libclang; librdkafka
# builds with make, a C compiler, zlib and OpenSSL headers) and, with --tansu, the tansu broker.
set -euo pipefail

want_tansu=false
[[ "${1:-}" == "--tansu" ]] && want_tansu=true

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

if $want_tansu && ! command -v tansu >/dev/null 2>&1; then
  echo "install-deps: installing the tansu broker (cargo install, once)" >&2
  cargo install tansu --version 0.6.0 --locked --features libsql --quiet
fi
