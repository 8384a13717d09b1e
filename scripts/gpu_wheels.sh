#!/usr/bin/env bash
# Wheels for a GPU machine without network: fetch them here, carry them over in parts, install there.
#
#   bash scripts/gpu_wheels.sh download [DIR]          # here (PyPI reachable): DIR/part-1 .. part-N, each < 56 MiB
#   bash scripts/gpu_wheels.sh install DIR/part-K [TARGET]
#                                                      # there, once per part (the machine must stay warm
#                                                      # between the calls); the call that brings the last
#                                                      # part reassembles and installs everything into TARGET
#   bash scripts/gpu_wheels.sh check [DIR]             # here: the same install into a fresh Python 3.12 venv,
#                                                      # then import DALI, pydicom, zstandard and the rest
#
# DIR defaults to .whl (ignored by git), TARGET to /tmp/site. What is fetched: scripts/gpu_wheels.txt
# (pinned; every tlx dependency the GPU image lacks). Why parts: one transfer to the GPU machine carries
# at most 64 MiB, the working tree included, and the DALI wheel alone is larger: a wheel over the part
# size travels as byte chunks (NAME.whl.chunk-KK-of-NN), which `install` joins with cat and checks
# against the sha256 the download recorded (DIR/part-*/MANIFEST, the same file in every part).
# Why one pip call at the end rather than one per part: `pip install --target --upgrade` replaces a
# top-level folder that is already in TARGET, and the DALI wheels share `nvidia/`, so a later part
# would delete what an earlier one installed. After installing, TARGET/nvidia/__init__.py becomes a
# pkgutil.extend_path stub, so that the image's own nvidia.* packages (cuBLAS, cuDNN, ...) stay
# importable beside DALI's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
PART_BYTES=${TLX_PART_BYTES:-$(( 56 * 1024 * 1024 ))}   # the tests set smaller parts
LIST=${TLX_WHEEL_LIST:-scripts/gpu_wheels.txt}
ROOM=$(( PART_BYTES - 65536 ))   # what a part holds besides its MANIFEST
STAGE=${TLX_WHEEL_STAGE:-/tmp/tlx-wheels}

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

platforms() {  # every manylinux tag a CPython 3.12 x86-64 machine with glibc 2.39 accepts (pip matches N exactly)
  local n
  for n in $(seq 5 39); do printf -- '--platform manylinux_2_%s_x86_64 ' "$n"; done
  printf -- '--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64'
}

download() {
  local dir=${1:-.whl} all part size i f name chunks k
  mkdir -p "$dir"
  rm -rf "$dir"/part-* "$dir/all"
  all="$dir/all"
  # shellcheck disable=SC2046
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 --abi abi3 --abi none $(platforms) -d "$all" -r "$LIST"
  local manifest="$dir/MANIFEST"
  : >"$manifest"
  while read -r size f; do  # record each wheel's sha256; cut the ones over the part size into chunks
    name=$(basename "$f")
    echo "wheel $(sha256sum "$f" | cut -d' ' -f1) $name" >>"$manifest"
    if (( size > ROOM )); then
      chunks=$(( (size + ROOM - 1) / ROOM ))
      split -b "$ROOM" -d -a 2 "$f" "$all/$name.chunk-"
      for k in $(seq 0 $((chunks - 1))); do
        mv "$all/$name.chunk-$(printf %02d "$k")" "$all/$name.chunk-$(printf %02d $((k + 1)))-of-$(printf %02d "$chunks")"
      done
      rm "$f"
    fi
  done < <(find "$all" -name '*.whl' -printf '%s %p\n')
  local -a sizes=()   # bytes per part: first fit over wheels and chunks, the largest first
  while read -r size f; do
    part=0
    for i in "${!sizes[@]}"; do
      if (( sizes[i] + size <= ROOM )); then part=$((i + 1)); break; fi
    done
    if (( part == 0 )); then sizes+=(0); part=${#sizes[@]}; fi
    sizes[part - 1]=$(( sizes[part - 1] + size ))
    echo "file part-$part $(basename "$f")" >>"$manifest"
  done < <(find "$all" -type f -printf '%s %p\n' | sort -rn)
  echo "parts ${#sizes[@]}" >>"$manifest"
  for i in $(seq 1 ${#sizes[@]}); do
    mkdir -p "$dir/part-$i"
    awk -v p="part-$i" '$1 == "file" && $2 == p {print $3}' "$manifest" | while read -r f; do mv "$all/$f" "$dir/part-$i/"; done
    cp "$manifest" "$dir/part-$i/MANIFEST"
  done
  rmdir "$all"
  echo "wheels: $(grep -c '^wheel ' "$manifest"), parts: ${#sizes[@]} (each at most $PART_BYTES bytes, its MANIFEST included)"
  for i in $(seq 1 ${#sizes[@]}); do
    printf '  %s/part-%s  %.1f MiB  %s\n' "$dir" "$i" "$(du -sb "$dir/part-$i" | awk '{print $1 / 1048576}')" \
        "$(ls "$dir/part-$i" | grep -v MANIFEST | tr '\n' ' ')"
  done
  echo "on the GPU machine, one call per part (carry $dir/part-K), the machine kept warm between them:"
  echo "  bash scripts/gpu_wheels.sh install $dir/part-K && export PYTHONPATH=/tmp/site:\$PWD"
}

install() {
  local part=${1:?usage: install DIR/part-K [TARGET]} target=${2:-/tmp/site} manifest missing f name n
  [ -f "$part/MANIFEST" ] || { echo "gpu_wheels: $part has no MANIFEST; give a folder that download made (DIR/part-K)" >&2; exit 2; }
  mkdir -p "$STAGE"
  if [ -f "$STAGE/MANIFEST" ] && ! cmp -s "$STAGE/MANIFEST" "$part/MANIFEST"; then
    echo "gpu_wheels: $STAGE holds parts of another download; remove it or set TLX_WHEEL_STAGE" >&2; exit 2
  fi
  cp "$part"/* "$STAGE/"
  manifest="$STAGE/MANIFEST"
  missing=$(awk '$1 == "file" {print $2, $3}' "$manifest" | while read -r p f; do
              name=${f%.chunk-*}
              [ -e "$STAGE/$f" ] || [ -e "$STAGE/$name" ] || echo "$p"; done | sort -u | tr '\n' ' ')
  if [ -n "$missing" ]; then
    echo "gpu_wheels: staged $(basename "$part") in $STAGE; still missing: $missing(nothing installed yet)"
    return 0
  fi
  for f in "$STAGE"/*.chunk-01-of-*; do  # join every chunked wheel, in chunk order
    [ -e "$f" ] || continue
    name=${f%.chunk-*}
    cat "$name".chunk-* >"$name.joining" && mv "$name.joining" "$name" && rm "$name".chunk-*
  done
  awk '$1 == "wheel" {print $2 "  " $3}' "$manifest" | (cd "$STAGE" && sha256sum --quiet -c -) \
    || { echo "gpu_wheels: a wheel in $STAGE does not match its sha256; carry its part again" >&2; exit 1; }
  n=$(grep -c '^wheel ' "$manifest")
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
      $(awk '$1 == "wheel" {print $3}' "$manifest" | sed "s|^|$STAGE/|")
  if [ -d "$target/nvidia" ]; then
    printf '%s\n' '# gpu_wheels.sh: nvidia.* packages from every sys.path entry (DALI here, CUDA libraries in the image)' \
        '__path__ = __import__("pkgutil").extend_path(__path__, __name__)' >"$target/nvidia/__init__.py"
  fi
  echo "gpu_wheels: installed $n wheels into $target; export PYTHONPATH=$target:\$PWD"
}

check() {
  # A fresh CPython 3.12 venv holding what the GPU image has that these wheels need (from PyPI), then every
  # part installed in turn exactly as on the GPU machine, then the imports that matter.
  local dir=${1:-.whl} py venv tmp
  py=${PYTHON312:-$(command -v python3.12 || true)}
  [ -n "$py" ] && "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
    || { echo "gpu_wheels: no Python 3.12 found; set PYTHON312" >&2; exit 2; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  venv="$tmp/venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy pyyaml packaging six typing-extensions nvidia-nvtx
  for part in "$dir"/part-*; do
    PYTHON="$venv/bin/python" TLX_WHEEL_STAGE="$tmp/stage" bash "$0" install "$part" "$tmp/site"
  done
  PYTHONPATH="$tmp/site" "$venv/bin/python" - <<'EOF'
import importlib, sys
import nvidia.dali, nvidia.dali.fn, pydicom, zstandard, webdataset, polars, nibabel, pylibjpeg, jpeg_ls
import libjpeg, openjpeg, rle
import os, nvidia.cu13  # the image's own nvidia.* packages (nvidia-nvtx here) stay visible beside DALI's
assert any(os.path.isdir(os.path.join(p, "include", "nvtx3")) for p in nvidia.cu13.__path__), nvidia.cu13.__path__
print(sys.version.split()[0], "DALI", nvidia.dali.__version__, "pydicom", pydicom.__version__,
      "zstandard", zstandard.__version__, "webdataset", importlib.metadata.version("webdataset"),
      "polars", polars.__version__, "nibabel", nibabel.__version__)
assert zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(b"tlx" * 100)) == b"tlx" * 100
EOF
}

case "${1:-}" in
  download) shift; download "$@" ;;
  install) shift; install "$@" ;;
  check) shift; check "$@" ;;
  *) usage ;;
esac
