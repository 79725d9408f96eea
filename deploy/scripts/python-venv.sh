#!/usr/bin/env bash
# Makes (once) a Python venv from a pinned requirements file and prints the path of its python,
# so that scripts and tests can use pinned Python packages without touching the system's:
#
#   py=$(deploy/scripts/python-venv.sh [--log NAME] [--what TEXT] REQUIREMENTS VENV_DIR)
#
# The venv is reinstalled only when the requirements file's sha256 or the Python version
# changes (both are recorded in VENV_DIR/.installed, written last); otherwise this returns at
# once and nothing is downloaded. If `python -m venv` fails (Debian's python3 keeps venv in a
# package of its own), python3-venv is installed with apt-get (through sudo when not root).
# Parallel runs on a fresh machine install once (flock on VENV_DIR.lock).
#
# stdout gets exactly one line, the venv's python (an absolute path); everything else,
# pip's output included, goes to stderr.
#   --log NAME    prefix of the messages on stderr (default python-venv)
#   --what TEXT   what the requirements are, for the install message (default: the packages
#                 of REQUIREMENTS)
#
# Environment (optional; none starts with CRMFLOW_, which crmflow reads as its configuration):
#   PYTHON        the Python that makes the venv (default python3; 3.9 or later)
set -euo pipefail

name='python-venv'
what=''
while (($#)); do
  case $1 in
    --log) name=${2:?--log needs a NAME}; shift 2 ;;
    --what) what=${2:?--what needs a TEXT}; shift 2 ;;
    --) shift; break ;;
    -*) echo "python-venv: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if (($# != 2)); then
  echo "usage: python-venv.sh [--log NAME] [--what TEXT] REQUIREMENTS VENV_DIR" >&2
  exit 2
fi
requirements=$1
venv=$2
python=${PYTHON:-python3}

log() { echo "$name: $*" >&2; }

[[ -f $requirements ]] || { log "error: $requirements not found"; exit 1; }
# Absolute paths: the printed python must work from any directory.
[[ $venv == /* ]] || venv=$PWD/$venv
what=${what:-the packages of $(basename "$requirements")}

command -v "$python" >/dev/null 2>&1 || { log "error: $python not found (set PYTHON)"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
  { log "error: $("$python" --version 2>&1) is too old; 3.9 or later is needed (set PYTHON)"; exit 1; }

# What the venv was made from: the requirements and the Python that runs them.
wanted=$( { sha256sum "$requirements" | cut -d ' ' -f 1; "$python" -c 'import sys; print(sys.version)'; } )
installed() { [[ -f $venv/.installed && "$(<"$venv/.installed")" == "$wanted" ]]; }

install() {
  log "installing $what into $venv (once; reused while $(basename "$requirements") is unchanged)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 has venv in a package of its own.
    log "installing python3-venv (apt-get)"
    local sudo_cmd=()
    [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2 </dev/null
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends python3-venv >&2 </dev/null
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements" </dev/null >&2
  echo "$wanted" >"$venv/.installed" # written last: a stamp means a complete install
}

if ! installed; then
  mkdir -p "$(dirname "$venv")"
  # Parallel runs on a fresh machine install once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
  installed || install
fi

echo "$venv/bin/python"
