#!/usr/bin/env bash
# Installs a built moslora so that it runs from any folder, without this clone or its .venv:
#
#   PREFIX/bin/moslora                 the binary (its rpath looks in ../lib/moslora/torch/lib first)
#   PREFIX/lib/moslora/torch/lib/      libtorch from the torch wheel the binary was built against
#   PREFIX/lib/moslora/nvidia/         the CUDA libraries libtorch loads (kept at the same relative
#                                      place, as libtorch's own rpath names them)
#   PREFIX/share/moslora/              the toy world's model and judge, the run templates, prompt sets
#
# usage: tools/install.sh BINARY PREFIX [--link]
#   --link  hard-link the libraries instead of copying them where PREFIX is on the same file
#           system as the wheel (a copy is made where it is not)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: tools/install.sh BINARY PREFIX [--link]}
PREFIX=${2:?usage: tools/install.sh BINARY PREFIX [--link]}
LINK=${3:-}

# The wheel's lib/ the binary was linked against (its rpath's last entry).
TORCH_LIB=$(readelf -d "$BIN" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p' | tr ':' '\n' | grep -v ORIGIN | tail -n 1)
if [ -z "$TORCH_LIB" ] || [ ! -f "$TORCH_LIB/libtorch_cpu.so" ]; then
    echo "error: $BIN names no libtorch folder in its rpath (found: '${TORCH_LIB}'); build it with 'make build'" >&2
    exit 1
fi
SITE=$(cd "$TORCH_LIB/../.." && pwd)

copy() {  # copy SRC_DIR DEST_DIR: DEST_DIR becomes a copy (or hard-linked copy) of SRC_DIR
    local src=$1 dest=$2
    rm -rf "$dest.new"
    mkdir -p "$(dirname "$dest")"
    if [ "$LINK" = "--link" ] && cp -al "$src" "$dest.new" 2>/dev/null; then :; else
        rm -rf "$dest.new"
        cp -a "$src" "$dest.new"
    fi
    rm -rf "$dest"
    mv "$dest.new" "$dest"
}

echo "installing into $PREFIX (libtorch from $SITE)"
mkdir -p "$PREFIX/bin" "$PREFIX/lib/moslora/torch" "$PREFIX/share/moslora"
copy "$TORCH_LIB" "$PREFIX/lib/moslora/torch/lib"
if [ -d "$SITE/nvidia" ]; then
    copy "$SITE/nvidia" "$PREFIX/lib/moslora/nvidia"
fi
copy assets/toy-model "$PREFIX/share/moslora/toy-model"
copy assets/toy-judge "$PREFIX/share/moslora/toy-judge"
copy assets/subjects "$PREFIX/share/moslora/subjects"
copy prompts "$PREFIX/share/moslora/prompts"
mkdir -p "$PREFIX/share/moslora/configs"
cp configs/sdxl-dreambooth.yaml configs/demo.yaml "$PREFIX/share/moslora/configs/"
# The binary last, through a temporary name: a half-copied binary never sits on the PATH.
cp "$BIN" "$PREFIX/bin/.moslora.new"
mv "$PREFIX/bin/.moslora.new" "$PREFIX/bin/moslora"
echo "installed $PREFIX/bin/moslora ($(du -sh "$PREFIX/lib/moslora" | cut -f1) of libraries)"
case ":$PATH:" in
    *":$PREFIX/bin:"*) ;;
    *) echo "add it to your PATH:  export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
