#!/usr/bin/env bash
# Build every cargo-fuzz target (fuzz/fuzz_targets/) and run each for SECONDS (default 30)
# from a temporary copy of its seed corpus (fuzz/corpus/<target>/), so the tree stays clean.
# Fails on the first crash, leak, timeout or out-of-memory; the input that did it is kept in
# fuzz/artifacts/<target>/ (see DEVELOPERS.md, "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The runs use libFuzzer seed FUZZ_SEED (default 1), so a CI run explores the same inputs
# every time and cannot fail by chance; set FUZZ_SEED=0 for a random seed (long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

seconds=${1:-30}
shift || true

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

start=$(date +%s)
if [ $# -gt 0 ]; then
    for t in "${targets[@]}"; do cargo +nightly fuzz build "$t"; done
else
    cargo +nightly fuzz build
fi
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    if [ -d "corpus/$t" ]; then
        cp -R "corpus/$t/." "$work/$t/"
    fi
    echo "fuzz: $t for ${seconds} s"
    if ! cargo +nightly fuzz run "$t" "$work/$t" -- \
        -max_total_time="$seconds" -seed="${FUZZ_SEED:-1}" -rss_limit_mb=2048 -timeout=30 \
        -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 80 "$work/$t.log" >&2
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/. Reproduce with:" >&2
        echo "  cd fuzz && cargo +nightly fuzz run $t artifacts/$t/<file>" >&2
        exit 1
    fi
    grep -E '^(Done [0-9]+ runs|stat::(number_of_executed_units|peak_rss_mb|new_units_added))' \
        "$work/$t.log" | sed "s/^/  /" || true
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash ($(($(date +%s) - start)) s in all)"
