#!/bin/sh
# Runs one libFuzzer target for a bounded time: usage t/fuzz/run.sh TARGET SECONDS
# Seeds from t/fuzz/corpus/TARGET, new inputs go to build/fuzz/new-TARGET,
# and those that add coverage are merged back into t/fuzz/corpus/TARGET.
# Appends "TARGET: N execs in S s, corpus C files, crashes K" to
# build/fuzz/summary.txt.
set -e
t=$1
secs=${2:-60}
bin=build/fuzz/fuzz_$t
corpus=t/fuzz/corpus/$t
new=build/fuzz/new-$t
log=build/fuzz/$t.log
mkdir -p "$corpus" "$new"
rm -f build/fuzz/crash-$t-*
echo "== fuzzing $t for ${secs}s"
status=0
"$bin" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 \
    -max_len=70000 -timeout=10 -artifact_prefix="build/fuzz/crash-$t-" \
    "$new" "$corpus" >"$log" 2>&1 || status=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
"$bin" -merge=1 "$corpus" "$new" >>"$log" 2>&1 || true
rm -rf "$new"
crashes=$(ls build/fuzz/crash-$t-* 2>/dev/null | wc -l)
files=$(ls "$corpus" | wc -l)
line="$t: ${execs:-?} execs in ${secs} s, corpus $files files, crashes $crashes"
echo "$line" | tee -a build/fuzz/summary.txt
if [ "$status" != 0 ]; then
    echo "fuzz target $t failed (exit $status); the end of $log:" >&2
    tail -40 "$log" >&2
    exit 1
fi
