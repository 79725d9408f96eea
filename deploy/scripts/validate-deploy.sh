#!/usr/bin/env bash
# Validates the deployment files under deploy/ (`make test` runs it): Kubernetes manifests,
# docker-compose.yml, the Dockerfile, Prometheus rules, the Grafana dashboard, crmflow config
# files, and that every metric the rules and the dashboard query is one crmflow exports.
# See deploy/scripts/validate_deploy.py for the checks.
#
# Installs what it needs itself, once: a Python venv with the validators pinned in
# validate-deploy.requirements.txt, under ~/.cache/crmflow (made by python-venv.sh, reused while
# that file is unchanged; then nothing is downloaded), and deploy/scripts/dockerfile-check (Go,
# BuildKit's parser and linter) under ~/.cache/crmflow/bin. Uses `docker compose` and
# `promtool` too where installed.
#
# Environment (optional; none starts with CRMFLOW_, which crmflow reads as its configuration):
#   PYTHON                  the Python that makes the venv (default python3; 3.9 or later)
#   VALIDATE_DEPLOY_VENV    the venv's directory (default ~/.cache/crmflow/validate-deploy-venv)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${VALIDATE_DEPLOY_VENV:-$HOME/.cache/crmflow/validate-deploy-venv}

log() { echo "validate-deploy: $*" >&2; }

# The validators' venv, made once and reused while the requirements and PYTHON are unchanged
# (python-venv.sh checks PYTHON and installs python3-venv where needed).
venv_python=$("$here/python-venv.sh" --log validate-deploy --what 'the validators' \
  "$here/validate-deploy.requirements.txt" "$venv")

# BuildKit's Dockerfile parser and linter, and its .dockerignore matcher (dockerfile-check/, Go):
# built once per version of its sources into ~/.cache/crmflow/bin. Without Go, the Python checks
# of the Dockerfile still run.
dockerfile_check=''
if command -v go >/dev/null 2>&1; then
  src=$here/dockerfile-check
  key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" <(go version) | sha256sum | cut -c 1-16)
  dockerfile_check=$HOME/.cache/crmflow/bin/dockerfile-check-$key
  if [[ ! -x $dockerfile_check ]]; then
    log "building deploy/scripts/dockerfile-check (once per version of it)"
    mkdir -p "$(dirname "$dockerfile_check")"
    (cd "$src" && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"       go build -trimpath -o "$dockerfile_check.tmp.$$" . </dev/null >&2)
    mv "$dockerfile_check.tmp.$$" "$dockerfile_check"
  fi
fi

DOCKERFILE_CHECK=$dockerfile_check PYTHONDONTWRITEBYTECODE=1 exec "$venv_python" "$here/validate_deploy.py" </dev/null
