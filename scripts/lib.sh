# Shared by scripts/test, scripts/demo and scripts/bench; source it, do not run it.
#
# Sets DOGPILE_ROOT (the repository root) and defines:
#   ensure_packages           install the Debian 12 build packages, or say how
#   ensure_bench_packages     the same for the peers scripts/bench compares with
#   configure_build DIR OPT.. meson setup DIR with OPTs, reusing a configured DIR

DOGPILE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# What a bare Debian 12 root (debootstrap's minbase) lacks to build and test:
# apt-get runs with --no-install-recommends, so clang's sanitizer runtimes
# (libclang-rt-14-dev, for the fuzz targets) are named, not left to clang's
# Recommends; bsdextrautils is hexdump, which the CLI tests compare against;
# help2man writes the man page from the command's help.
# scripts/fresh-machine-check shows the list is complete.
DOGPILE_PACKAGES=(
  meson ninja-build pkg-config cmake g++ clang python3
  liblmdb-dev libcereal-dev libxxhash-dev catch2 libcli11-dev libbenchmark-dev
  libfuzzer-14-dev libclang-rt-14-dev bsdextrautils help2man
)

# The caches and tools scripts/bench measures dogpile against, and what draws
# its plots; only scripts/bench installs them.
DOGPILE_BENCH_PACKAGES=(
  persistent-cache-cpp-dev libhiredis-dev redis-server
  python3-diskcache python3-dogpile.cache python3-lmdb python3-matplotlib
)

ensure_packages() {
  install_missing "${DOGPILE_PACKAGES[@]}"
}

ensure_bench_packages() {
  install_missing "${DOGPILE_BENCH_PACKAGES[@]}"
}

# install_missing PACKAGE... : installs those not installed (as root), or
# prints the command and exits.
install_missing() {
  local missing=() package status
  for package in "$@"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0

  echo "missing Debian packages: ${missing[*]}" >&2
  if [[ "$(id -u)" -eq 0 ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "install them as root, then run this again:" >&2
    echo "  sudo sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}'" >&2
    exit 1
  fi
}

# configure_build DIR [meson options...]
# A configured DIR is kept (its object files are still good) and only gets the
# options applied; one meson cannot read any more is set up again in place.
configure_build() {
  local dir="$1"
  shift
  if [[ -f "$dir/meson-private/coredata.dat" ]]; then
    meson configure "$dir" "$@" >/dev/null && return 0
    echo "reconfiguring $dir" >&2
    meson setup --reconfigure "$dir" "$@" && return 0
    echo "setting up $dir from scratch" >&2
    meson setup --wipe "$dir" "$@"
  else
    meson setup "$dir" "$@"
  fi
}
