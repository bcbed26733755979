#!/usr/bin/env bash
# The README's SimCSE study on STS-B dev (SmolLM2-135M, 2-core CPU: ~2 h). Run from the
# repo root after the README's MNTP run and merge (outputs/smollm2-mntp-wikitext/adapter,
# outputs/smollm2-mntp-merged). All SimCSE runs: batch 32, wiki1m prefix, batches padded to
# length buckets; lr 5e-5 linear over 150 steps (optimizer.decay_steps) for the first four
# (the 50-step run is the first 50 steps of the 100-step one: same seed, same schedule), and
# the configs/simcse/smollm2.yaml default (lr 3e-4 linear over 100 steps) for the last two.
set -euo pipefail
M=$(python -c "from llm2vec_jax.checkpoints.default_model import resolve_model; print(resolve_model('smollm2'))")
DEV=${DEV:-../shared/data/stsb/dev.tsv}  # the developers' copy; or DEV=hf:mteb/stsbenchmark-sts
# configs/simcse/smollm2.yaml names Wiki1M on the hub; offline, its first 11,914 lines
# (the same sentences) from the developers' copy.
WIKI1M=${WIKI1M:-../shared/data/wiki1m_prefix/wiki1m_for_simcse.first11914.txt}
DATA="--set data.path=$WIKI1M --set data.data_files=null"
O=outputs/sts-simcse-study
mkdir -p $O
COMMON="--set run.global_batch_size=32 --set optimizer.learning_rate=5e-5 --set optimizer.decay_steps=150 --set run.eval_every=50 --set run.save_every=50 --set run.progress_bar=false"

simcse() {  # name, steps, extra overrides...
    local name=$1 steps=$2; shift 2
    python -m llm2vec_jax.train --config configs/simcse/smollm2.yaml $COMMON $DATA \
        --set run.max_steps=$steps --set run.output_dir=$O/$name "$@" > $O/$name.log 2>&1
}
simcse_default() {  # name, extra overrides...: the config as shipped (100 x 32, lr 3e-4)
    local name=$1; shift
    python -m llm2vec_jax.train --config configs/simcse/smollm2.yaml $DATA --set run.progress_bar=false \
        --set run.output_dir=$O/$name "$@" > $O/$name.log 2>&1
}
sts() {  # model, adapter, result name
    python -m llm2vec_jax.evaluate sts --model $1 --adapter $2 --data $DEV --max-length 512 \
        --quiet > $O/$3.json
}

simcse mntp-100 100 && sts outputs/smollm2-mntp-merged $O/mntp-100/adapter bi_mntp_simcse100
simcse mntp-50 50 && sts outputs/smollm2-mntp-merged $O/mntp-50/adapter bi_mntp_simcse50
simcse bi-50 50 --set model.adapter=null && sts $M $O/bi-50/adapter bi_simcse50
simcse bi-50-d01 50 --set model.adapter=null --set contrastive.dropout=0.1 \
    && sts $M $O/bi-50-d01/adapter bi_simcse50_dropout01
simcse_default mntp-lr3e-4 && sts outputs/smollm2-mntp-merged $O/mntp-lr3e-4/adapter bi_mntp_simcse100_lr3e-4
simcse_default bi-lr3e-4 --set model.adapter=null && sts $M $O/bi-lr3e-4/adapter bi_simcse100_lr3e-4
grep -H spearman $O/*.json
