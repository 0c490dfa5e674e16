# Sourced by the CI scripts: `ci_venv NAME PACKAGE...` prints the directory of a virtualenv
# holding the packages, made once per machine and kept in the user's cache, outside the
# clone: a CI run on a clean clone then spends no time on pip. The directory's name carries
# a hash of the package list, so a changed list makes a new one.
ci_venv() {
  local name=$1
  shift
  local cache=${IMAGE_GATEWAY_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/image-gateway-ci}
  local hash
  hash=$(printf '%s\n' "$(python3 --version)" "$@" | sha256sum | cut -c1-12)
  local dir="$cache/$name-$hash"
  if [ ! -f "$dir/.ready" ]; then
    rm -rf "$dir"
    mkdir -p "$cache"
    python3 -m venv "$dir" >&2
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
    touch "$dir/.ready"
  fi
  printf '%s\n' "$dir"
}
