#!/bin/bash
# End-to-end time per pair, as a user runs it: `graphreg register` in a fresh process (reading,
# registering, checks, region, writing; wall time by /usr/bin/time), then elastix and convexAdam
# through `graphreg bench run` on the same pair (a fresh process per method; their seconds are the
# method call alone), back to back. docs/benchmark.md "End to end".
# Usage: tools/bench_end_to_end.sh PAIRS_FOLDER OUT_FOLDER   (run from the repository root)
set -euo pipefail
pairs=$(realpath "$1"); out=$(realpath -m "$2"); mkdir -p "$out"
for dir in "$pairs"/pair_*/; do
  p=$(basename "$dir")
  echo "== $p $(date -u +%H:%M:%S) $(uptime | sed 's/.*load/load/')"
  /usr/bin/time -f "graphreg_cli_wall %e s rss %M kB" graphreg register "$dir/fixed.nii.gz" "$dir/moving.nii.gz" \
     --fixed-mask "$dir/fixed_mask.nii.gz" --moving-mask "$dir/moving_mask.nii.gz" \
     --landmarks "$dir/fixed_landmarks.csv" --out "$out/$p" --overwrite 2>&1 | grep -E "wrote|graphreg_cli_wall"
  mkdir -p "$out/one_$p" && ln -sfn "$dir" "$out/one_$p/$p"
  graphreg bench run --pairs "$out/one_$p" --methods elastix,convexadam --json "$out/peers_$p.json" > "$out/peers_$p.log" 2>&1
  python -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']; print([(r['method'], round(r['seconds_total'], 1)) for r in rows])" "$out/peers_$p.json"
done
