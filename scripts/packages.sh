# Sourced by run.sh and test.sh: installs Debian packages that are missing.
#
#   missing=(); command -v cmake >/dev/null || missing+=(cmake); install_missing "${missing[@]}"
#
# As root with apt-get it installs them; otherwise it names them and exits 1.
install_missing() {
    (($#)) || return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing $*"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing: $* (Debian packages). Install with: sudo apt-get install $*" >&2
        exit 1
    fi
}

# What building voxgate needs beyond the Rust toolchain: the bundled libopus builds with cmake
# and a C compiler.
build_packages() {
    command -v cmake >/dev/null 2>&1 || echo cmake
    command -v cc >/dev/null 2>&1 || echo build-essential
}
