# Shared by the scripts in this folder: install what streambus needs to run and test.
# shellcheck shell=bash

# Runs a command as root: directly when we are root, else through sudo (and says so).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    echo "streambus: running with sudo: $*" >&2
    sudo "$@"
  else
    echo "streambus: need root to run: $* (install sudo or run as root)" >&2
    return 1
  fi
}

# Installs redis-server and redis-cli from the distribution's packages when missing.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "streambus: redis-server is not installed and this is not a Debian/Ubuntu system." >&2
    echo "           Install Redis 7 (e.g. 'brew install redis', 'dnf install redis') and run again." >&2
    return 1
  fi
  echo "streambus: redis-server not found; installing it from the distribution's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package may start a system service on 6379; streambus's tests never use it.
  command -v redis-server >/dev/null 2>&1
}

# Installs python3 from the distribution's packages when missing: the tests of
# `consume --pipe` run Python handlers, as the README shows them.
ensure_python() {
  # python3 with venv and pip: the Python package's tests build it in a venv.
  command -v python3 >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "streambus: python3 is not installed and this is not a Debian/Ubuntu system; install Python 3 and run again." >&2
    return 1
  fi
  echo "streambus: python3 not found; installing it from the distribution's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  command -v python3 >/dev/null 2>&1
}
