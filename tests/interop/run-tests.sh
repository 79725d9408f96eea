#!/usr/bin/env bash
# Runs the Python interop tests of tests/interop/ (the registry stand-in, avro_records.py) in
# their pinned venv, made once by deploy/scripts/python-venv.sh:
#
#   tests/interop/run-tests.sh [-v] [-k PATTERN ...]     (arguments go to python -m unittest)
#
# test_avro_records.py starts its own Kafka broker (deploy/kafka/kafka.sh) unless
# INTEROP_BOOTSTRAP=HOST:PORT names one.
#
# Environment (optional; none starts with CRMFLOW_, which crmflow reads as its configuration):
#   PYTHON          the Python that makes the venv (default python3; 3.9 or later)
#   INTEROP_VENV    the venv's directory (default ~/.cache/crmflow/interop-venv)
#   INTEROP_BOOTSTRAP  a running broker to use instead of starting one
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=$("$repo/deploy/scripts/python-venv.sh" --log interop --what 'confluent-kafka and its Avro serdes' \
  "$here/requirements.txt" "${INTEROP_VENV:-$HOME/.cache/crmflow/interop-venv}")
cd "$here"
PYTHONDONTWRITEBYTECODE=1 exec "$py" -m unittest discover -s "$here" -p 'test_*.py' "$@" </dev/null
