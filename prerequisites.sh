#!/usr/bin/env bash
# Installs and checks what weft needs from Debian, as listed in prerequisites.list (the one list).
#
#   ./prerequisites.sh install STAGE...   apt-get install the missing packages, then check
#   ./prerequisites.sh check STAGE...     every listed path exists (exit 1 naming the package if not)
#   ./prerequisites.sh packages STAGE...  the packages, one per line
#   ./prerequisites.sh cargo-dir          the directory holding cargo (>= 1.95), also under sudo
#   ./prerequisites.sh pypi-install STAGE...  the PyPI tools of prerequisites-pypi.list, into
#                                         the venv $WEFT_PYVENV (default target/pyvenv), then check
#   ./prerequisites.sh pypi-dir           that venv's directory
#
# STAGE is `build` (install.sh) or `test` (integration/run-tests.sh installs build and test).
# The PyPI tools are a separate list and a separate venv on purpose: Debian packages go through
# apt into the system, PyPI packages never do (only into weft's own venv).
set -euo pipefail

list="$(cd "$(dirname "$0")" && pwd)/prerequisites.list"
action=${1:?usage: prerequisites.sh install|check|packages STAGE... | cargo-dir}
shift

# The Rust toolchain comes from rustup, not Debian. `sudo` resets PATH (secure_path) and may keep
# the caller's HOME, so look where rustup puts cargo for root and for the sudo caller too.
cargo_dir() {
  local dir home
  if command -v cargo >/dev/null 2>&1; then
    dir=$(dirname "$(command -v cargo)")
  else
    for home in "${CARGO_HOME:-}" "$HOME/.cargo" \
        ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"} /root/.cargo; do
      [ -n "$home" ] && [ -x "$home/bin/cargo" ] && { dir=$home/bin; break; }
    done
  fi
  if [ -z "${dir:-}" ]; then
    echo "prerequisites: cargo not found; weft needs a Rust toolchain >= 1.95 (rustup)" >&2
    return 1
  fi
  local version
  version=$("$dir/cargo" --version | awk '{print $2}')
  if ! printf '1.95.0\n%s\n' "$version" | sort -V -C; then
    echo "prerequisites: cargo $version in $dir is older than 1.95" >&2
    return 1
  fi
  echo "$dir"
}
if [ "$action" = cargo-dir ]; then
  cargo_dir
  exit
fi

here=$(cd "$(dirname "$0")" && pwd)
pyvenv=${WEFT_PYVENV:-$here/target/pyvenv}
pylist="$here/prerequisites-pypi.list"
if [ "$action" = pypi-dir ]; then
  echo "$pyvenv"
  exit
fi
if [ "$action" = pypi-install ]; then
  [ $# -gt 0 ] || { echo "prerequisites.sh: name at least one stage" >&2; exit 2; }
  reqs=() paths=()
  while read -r stage req path rest; do
    case "$stage" in ''|'#'*) continue ;; esac
    [ -n "$path" ] && [ -z "$rest" ] || { echo "prerequisites-pypi.list: malformed line: $stage $req $path $rest" >&2; exit 2; }
    for wanted in "$@"; do
      [ "$stage" = "$wanted" ] && { reqs+=("$req"); paths+=("$path"); }
    done
  done <"$pylist"
  [ ${#reqs[@]} -gt 0 ] || exit 0
  missing=0
  for p in "${paths[@]}"; do [ -e "$pyvenv/$p" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "==> pip install ${reqs[*]} (into $pyvenv)"
    [ -x "$pyvenv/bin/pip" ] || /usr/bin/python3 -m venv "$pyvenv"
    "$pyvenv/bin/pip" install --disable-pip-version-check -q "${reqs[@]}"
  fi
  bad=0
  for p in "${paths[@]}"; do
    [ -e "$pyvenv/$p" ] || { echo "prerequisites: $pyvenv/$p is missing (prerequisites-pypi.list)" >&2; bad=1; }
  done
  exit "$bad"
fi
[ $# -gt 0 ] || { echo "prerequisites.sh: name at least one stage (build, test)" >&2; exit 2; }

# Lines "stage path package" of the requested stages.
entries() {
  local stage path package rest wanted
  while read -r stage path package rest; do
    case "$stage" in ''|'#'*) continue ;; esac
    if [ -z "$package" ] || [ -n "$rest" ]; then
      echo "prerequisites.list: malformed line: $stage $path $package $rest" >&2
      exit 2
    fi
    for wanted in "$@"; do
      [ "$stage" = "$wanted" ] && printf '%s %s\n' "$path" "$package"
    done
  done <"$list"
}

packages() { entries "$@" | awk '{print $2}' | sort -u; }

check() {
  local path package bad=0
  while read -r path package; do
    if [ ! -e "$path" ]; then
      echo "prerequisites: $path is missing (Debian package $package, prerequisites.list)" >&2
      bad=1
    fi
  done < <(entries "$@")
  return "$bad"
}

install_missing() {
  local missing=() p
  while read -r p; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done < <(packages "$@")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  check "$@"
}

case "$action" in
  install) install_missing "$@" ;;
  check) check "$@" ;;
  packages) packages "$@" ;;
  *) echo "prerequisites.sh: unknown action $action (install, check, packages, cargo-dir, pypi-install, pypi-dir)" >&2; exit 2 ;;
esac
