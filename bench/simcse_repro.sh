#!/usr/bin/env bash
# Does the README's old row "bi + SimCSE, lr 3e-4, 100 x 32: STS-B dev 55.63" (commit 890f379)
# reproduce? The same command at each git revision given, each in its own worktree:
#   python -m llm2vec_jax.train --config configs/simcse/smollm2.yaml --set model.adapter=null
#   (SimCSE from the base model, bidirectional, seed 42: the config's default)
# then `evaluate sts` on STS-B dev at max_length 512, no instruction, as that row was scored.
# The first revision runs twice (same command, fresh output dir): equal scores and adapter
# bytes mean training is deterministic on this CPU (REPEAT=0 skips the second run). Every
# other revision's adapter is also scored by the first revision's evaluator, which separates
# a change in training from a change in evaluation. About 15 minutes a run on the idle 2-core
# CPU for today's code; older revisions are slower (no packing).
#
#   bench/simcse_repro.sh                 # HEAD (twice) and 890f379
#   bench/simcse_repro.sh HEAD            # HEAD twice only
#   STEPS=5 bench/simcse_repro.sh HEAD    # a smoke run (5 steps, first 100 pairs)
#   REPEAT=0 bench/simcse_repro.sh        # each revision once
# Results: bench/results/simcse_repro-<date>.json (the score of each run, adapter sha256).
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
[ $# -gt 0 ] || set -- HEAD 890f379
REVS=("$@")
WIKI1M=${WIKI1M:-$ROOT/../shared/data/wiki1m_prefix/wiki1m_for_simcse.first11914.txt}
DEV=${DEV:-$ROOT/../shared/data/stsb/dev.tsv}
STEPS=${STEPS:-}
REPEAT=${REPEAT:-1}
WORK=${WORK:-$ROOT/outputs/simcse-repro}
mkdir -p "$WORK"
RESULTS=()

tree_of() {  # revision -> its worktree, created on first use
    local tree=$WORK/tree-$(git rev-parse --short "$1")
    [ -d "$tree" ] || git worktree add --detach "$tree" "$1" > /dev/null
    echo "$tree"
}

sts() {  # evaluator's tree, adapter, result file, extra evaluate args...
    local tree=$1 adapter=$2 out=$3 model; shift 3
    model=$(cd "$tree" && python -c "from llm2vec_jax.checkpoints.default_model import resolve_model; print(resolve_model('smollm2'))")
    (cd "$tree" && python -m llm2vec_jax.evaluate sts --model "$model" --adapter "$adapter" \
        --data "$DEV" --max-length 512 --quiet "$@") > "$out"
}

run() {  # revision, run name
    local rev=$1 name=$2 tree
    tree=$(tree_of "$rev")
    local cfg=$tree/configs/simcse/smollm2.yaml
    local sets=(--set model.adapter=null --set "data.path=$WIKI1M" --set run.progress_bar=false
                --set "run.output_dir=$WORK/$name")
    # Today's config names Wiki1M on the hub (a data_files entry); older ones read the file.
    grep -q "data_files" "$cfg" && sets+=(--set data.data_files=null)
    local limit=()
    if [ -n "$STEPS" ]; then sets+=(--set "run.max_steps=$STEPS"); limit=(--limit 100); fi
    rm -rf "${WORK:?}/$name"
    local t0=$SECONDS
    (cd "$tree" && python -m llm2vec_jax.train --config "$cfg" "${sets[@]}") > "$WORK/$name.log" 2>&1
    local train_s=$((SECONDS - t0))
    sts "$tree" "$WORK/$name/adapter" "$WORK/$name.sts.json" "${limit[@]}"
    local cross=-
    if [ "$(git rev-parse "$rev")" != "$(git rev-parse "${REVS[0]}")" ]; then
        cross=$WORK/$name.sts-by-$(git rev-parse --short "${REVS[0]}").json
        sts "$(tree_of "${REVS[0]}")" "$WORK/$name/adapter" "$cross" "${limit[@]}"
    fi
    RESULTS+=("$name $(git rev-parse "$rev") $train_s $WORK/$name.sts.json $WORK/$name/adapter $cross")
    echo "$name: $(cat "$WORK/$name.sts.json" | tr -d '\n' | head -c 300)"
}

first=1
for rev in "${REVS[@]}"; do
    short=$(git rev-parse --short "$rev")
    run "$rev" "run-$short-a"
    if [ $first = 1 ] && [ "$REPEAT" = 1 ]; then run "$rev" "run-$short-b"; fi
    first=0
done
printf '%s\n' "${RESULTS[@]}" > "$WORK/runs.txt"
python - "$WORK/runs.txt" "$STEPS" <<'PY'
import hashlib, json, sys, time
from pathlib import Path
sys.path.insert(0, "bench")
import common
runs = []
for line in Path(sys.argv[1]).read_text().splitlines():
    name, commit, train_s, sts, adapter, cross = line.split()
    weights = Path(adapter) / "adapter_model.safetensors"
    runs.append({"name": name, "commit": commit, "train_s": int(train_s),
                 "sts": json.loads(Path(sts).read_text()),
                 "sts_by_first_revision": None if cross == "-" else json.loads(Path(cross).read_text()),
                 "adapter_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()})
path = common.write_results("simcse_repro", {
    "bench": "simcse_repro", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "command": "train --config configs/simcse/smollm2.yaml --set model.adapter=null "
               "(Wiki1M prefix file); evaluate sts --max-length 512 (STS-B dev)",
    "smoke_steps": sys.argv[2] or None, "runs": runs, "machine": common.machine_state()})
print(f"results: {path}")
PY
