#!/usr/bin/env bash
# The larger-budget accuracy study on one GPU (16 CPU cores): one `python -m yolo_dero.study` process per
# (architecture, arm chain, seed), P at a time, in priority order, everything stopped after LIMIT seconds (finished
# runs are kept: each writes its JSON when done). Run from the repository root:
#   bash results/study-gpu-h100/run.sh                      # then: python -m yolo_dero.study table --out $RES
# The variables below shrink it for a smoke test on CPU (DEVICE=cpu DET_BUDGET=... CLS_BUDGET=...).
# JOBS=FILE runs FILE's lines instead (one `python -m yolo_dero.study` argument list per line, in priority order).
set -u
RES=${RES:-results/study-gpu-h100}
RUNS=${RUNS:-/tmp/study-runs}
LOGS=${LOGS:-/tmp/study-logs}
DEVICE=${DEVICE:-cuda}
P=${P:-16}
LIMIT=${LIMIT:-480}
DET_SEEDS=${DET_SEEDS:-"0 1 2 3 4 5"}
CLS_SEEDS=${CLS_SEEDS-"0 1 2"}  # CLS_SEEDS="" runs no classification
# "original+dero-rep-c3par-hkd": a distilled arm after the original it distils from, in one job
DET_ARMS=${DET_ARMS:-"original+dero-rep-c3par-hkd dero-rep-c3par plain-rep-c3"}
DET_BUDGET=${DET_BUDGET:-"--epochs 40 --imgsz 160 --n-train 512 --n-val 192 --workers 2"}
CLS_BUDGET=${CLS_BUDGET:-"--arch mcunet_v4 --epochs 30 --lr 0.05 --wd 1e-4 --label-smoothing 0 --crop-scale-min 1.0 -j 1"}
PY=${PY:-python3}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$LOGS"

jobs=()
det_jobs() {  # by default: the original then the default detector distilled from it; the default and its plain twin alone
    for s in "$@"; do
        for a in $DET_ARMS; do jobs+=("det $DET_BUDGET --seeds $s --arms ${a//+/ }"); done  # a+b: one job, in order
    done
}
read -r -a det_seeds <<< "$DET_SEEDS"
read -r -a cls_seeds <<< "$CLS_SEEDS"
det_jobs "${det_seeds[@]:0:3}"
for s in "${cls_seeds[@]}"; do
    for a in original dero plain; do jobs+=("cls $CLS_BUDGET --seeds $s --arms $a"); done
done
det_jobs "${det_seeds[@]:3}"

if [ -n "${JOBS:-}" ]; then grep -v '^ *#' "$JOBS" | grep . > "$LOGS/jobs.txt"; else printf '%s\n' "${jobs[@]}" > "$LOGS/jobs.txt"; fi
export RES RUNS LOGS DEVICE PY
# shellcheck disable=SC2016
timeout "$LIMIT" xargs -P "$P" -d '\n' -I{} bash -c \
    'log="$LOGS/$(echo "{}" | md5sum | cut -c1-8).log"; echo "{}" > "$log";
     "$PY" -m yolo_dero.study {} --device "$DEVICE" --out "$RES" --runs "$RUNS" >> "$log" 2>&1;
     echo "exit $? after ${SECONDS}s: {}" >> "$LOGS/done.txt"' < "$LOGS/jobs.txt"
echo "xargs/timeout exit $?"
"$PY" -m yolo_dero.study table --out "$RES" > /dev/null
# On the lent machine only 8 files come back from $OUT, and a machine idle for 30 s goes back with everything on it:
# hand the records and logs back as one file, in the same call.
if [ -n "${OUT:-}" ]; then tar czf "$OUT/study.tgz" "$RES" "$LOGS" && echo "records and logs: \$OUT/study.tgz"; fi
