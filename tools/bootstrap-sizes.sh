#!/usr/bin/env bash
# Bootstrap sizes: each function's release bootstrap (intake, submit, poll, collect) as the
# template's `sam build` makes it -- BuildMethod rust-cargolambda on provided.al2023, that is
# `cargo lambda build --release` (--arm64 for arm64; the x86_64 target for x86_64), with the
# workspace's [profile.release] (opt-level "z" but 3 for the copy's hashing, checksum and inflate
# crates, thin LTO, 4 codegen units, panic=abort, strip) -- for x86_64 and
# arm64, beside the issue's target (10 MB = 10,000,000 bytes). Prints each bootstrap's bytes and
# what it zips to (the deployment package). An architecture that cannot be built here is printed
# as "not measured" with the reason.
#
# Each architecture builds every dependency once into target/<triple>/release (the first run takes
# minutes; later ones only relink what changed).
#
#   tools/bootstrap-sizes.sh            run by ./dev bench (after ./dev setup: cargo-lambda and zig
#                                       come from .venv/tools)
#   LR_BENCH_SIZES=host (the default, what ./dev bench measures within its 20 minutes): the
#                                       x86_64 release build on this machine (cargo build --release,
#                                       target/release: the same code and profile as cargo lambda's
#                                       x86_64 build, linked by the host's linker), built first by
#                                       ./dev bench together with the simulator (`build` below), so
#                                       measuring here rebuilds nothing
#   LR_BENCH_SIZES="x86_64 arm64" | arm64 | x86_64 | off  cargo lambda's own builds per architecture.
#                                       From scratch each architecture takes about 6-7 min on 2
#                                       cores, and about 4 min again after any change to shared/
#                                       (thin LTO relinks every function).
#   LR_SIZE_EXPERIMENT=1 (or =arm64, or ="x86_64 arm64") tools/bootstrap-sizes.sh
#                                       also builds with fat LTO and one codegen unit (opt-level "z")
#                                       into target/size-experiment (every dependency again: about as
#                                       long as a first build), printed as an experiment only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PATH="$ROOT/.venv/tools/bin:$PATH"
FUNCTIONS=(intake submit poll collect)
TARGET_BYTES=10000000
PYTHON="${PYTHON:-python3}"

packages=()
for f in "${FUNCTIONS[@]}"; do packages+=(-p "$f"); done

# The host build: the four functions and the simulator in one `cargo build --release`, as
# `./dev bench` makes it first (`tools/bootstrap-sizes.sh build`): one dependency build serves
# both, and measuring afterwards rebuilds nothing. (Features are unified with the simulator's; what
# that adds to a bootstrap is dead code the linker drops.)
host_build() { cargo build --release --quiet --bins -p mde-sim "${packages[@]}"; }
if [[ "${1:-}" == build ]]; then
  host_build
  exit 0
fi

# Bytes of the deployment zip (deflate, as cargo lambda's --output-format zip writes it).
zipped() {
  "$PYTHON" - "$1" <<'EOF'
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[1], "bootstrap")
print(len(buf.getvalue()))
EOF
}

# One row per function from the bootstraps under $2 (cargo lambda's --lambda-dir).
rows() {
  local arch="$1" dir="$2" f b z
  for f in "${FUNCTIONS[@]}"; do
    b="$(stat -c %s "$dir/$f/bootstrap")"
    z="$(zipped "$dir/$f/bootstrap")"
    awk -v a="$arch" -v f="$f" -v b="$b" -v z="$z" -v t="$TARGET_BYTES" 'BEGIN {
      printf "  %-7s %-8s %12d %6.2f MB %12d %6.2f MB   %s\n", a, f, b, b / 1e6, z, z / 1e6, (b <= t ? "met" : "MISSED") }'
  done
}

# Builds the functions for one architecture; prints its rows, or why it could not.
measure() {
  local arch="$1" triple="$2" dir="$ROOT/target/lambda-sizes/$1" started log
  shift 2
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    printf '  %-7s not measured: the %s standard library is not installed (rustup target add %s)\n' "$arch" "$triple" "$triple"
    return
  fi
  log="$(mktemp)"
  started=$SECONDS
  if ! cargo lambda build --release --quiet "$@" "${packages[@]}" --lambda-dir "$dir" >"$log" 2>&1; then
    printf '  %-7s not measured: cargo lambda build failed:\n' "$arch"
    tail -n 5 "$log" | sed 's/^/            /'
    rm -f "$log"
    return
  fi
  rm -f "$log"
  rows "$arch" "$dir"
  printf '  %-7s (cargo lambda build --release %s: %d s)\n' "$arch" "$*" "$((SECONDS - started))"
}

ARCHS="${LR_BENCH_SIZES:-host}"
if [[ "$ARCHS" == host ]]; then
  started=$SECONDS
  echo "bootstrap sizes: cargo build --release on this x86_64 machine (as cargo lambda builds x86_64, but linked by the host; LR_BENCH_SIZES=\"x86_64 arm64\" builds with cargo lambda), [profile.release] $(awk '/^\[profile.release\]/{p=1;next} /^\[profile.release.package./{p=1; sub(/^\[profile.release.package./,""); sub(/\]$/,""); printf "%s: ", $0; next} /^\[/{p=0} p&&NF&&!/^#/{printf "%s; ", $0}' Cargo.toml)target 10 MB (10,000,000 bytes) per bootstrap"
  printf '  %-7s %-8s %12s %9s %12s %9s   %s\n' arch function "bootstrap B" "" "zipped B" "" "target <= 10 MB"
  host_build
  dir="$(mktemp -d)"
  for f in "${FUNCTIONS[@]}"; do mkdir -p "$dir/$f"; cp "target/release/$f" "$dir/$f/bootstrap"; done
  rows host "$dir"
  rm -rf "$dir"
  printf '  (cargo build --release: %d s)\n' "$((SECONDS - started))"
  exit 0
fi
if [[ "$ARCHS" == off || "$ARCHS" == 0 ]]; then
  echo "bootstrap sizes: not measured (LR_BENCH_SIZES=$ARCHS)"
  exit 0
fi
if ! cargo lambda --version >/dev/null 2>&1; then
  echo "bootstrap sizes: not measured: cargo-lambda is not installed (./dev setup puts it in .venv/tools)"
  exit 0
fi
echo "bootstrap sizes: cargo lambda build --release ($(cargo lambda --version | awk '{print $2}'), zig $(python-zig version 2>/dev/null || echo '?')), [profile.release] $(awk '/^\[profile.release\]/{p=1;next} /^\[profile.release.package./{p=1; sub(/^\[profile.release.package./,""); sub(/\]$/,""); printf "%s: ", $0; next} /^\[/{p=0} p&&NF&&!/^#/{printf "%s; ", $0}' Cargo.toml)target 10 MB (10,000,000 bytes) per bootstrap"
printf '  %-7s %-8s %12s %9s %12s %9s   %s\n' arch function "bootstrap B" "" "zipped B" "" "target <= 10 MB"
for arch in x86_64 arm64; do
  if [[ " $ARCHS " != *" $arch "* ]]; then
    printf '  %-7s not measured (LR_BENCH_SIZES=%s)\n' "$arch" "$ARCHS"
  elif [[ "$arch" == x86_64 ]]; then
    measure x86_64 x86_64-unknown-linux-gnu --x86-64
  else
    measure arm64 aarch64-unknown-linux-gnu --arm64
  fi
done

# The experiment: LR_SIZE_EXPERIMENT=1 (x86_64), =arm64, or ="x86_64 arm64".
EXPERIMENT="${LR_SIZE_EXPERIMENT:-0}"
[[ "$EXPERIMENT" == 1 ]] && EXPERIMENT=x86_64
if [[ "$EXPERIMENT" == 0 ]]; then
  echo "  experiment opt-level=\"z\"/fat LTO: skipped (it rebuilds every dependency, minutes on 2 cores; LR_SIZE_EXPERIMENT=1 or =arm64 runs it)"
fi
for arch in $([[ "$EXPERIMENT" == 0 ]] || echo "$EXPERIMENT"); do
  flag="--x86-64"; [[ "$arch" == arm64 ]] && flag="--arm64"
  dir="$ROOT/target/lambda-sizes/$arch-z"
  started=$SECONDS
  # (CARGO_TARGET_DIR, not --target-dir, which cargo lambda passes on to cargo metadata)
  if CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_TARGET_DIR="$ROOT/target/size-experiment" \
    cargo lambda build --release --quiet "$flag" "${packages[@]}" --lambda-dir "$dir" >/dev/null 2>&1; then
    echo "  experiment, not the release profile: opt-level=\"z\", lto=\"fat\", codegen-units=1 ($arch: $((SECONDS - started)) s to build)"
    rows "$arch" "$dir"
  else
    echo "  experiment: the opt-level=\"z\" build for $arch failed"
  fi
done
