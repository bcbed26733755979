#!/usr/bin/env bash
# Start training on every worker of a TPU VM: one process per host, in the background.
SCRIPT_GROUPS="launch"
USAGE="usage: tpu_scripts/launch.sh --name NAME --zone ZONE --output-dir gs://BUCKET/RUN
                             [--config configs/mntp/llama3-8b.yaml] [--stage mntp|simcse|supervised]
                             [--set key=value ...] [--project PROJECT] [--queued] [--dry-run]

  --output-dir   where checkpoints, metrics and the adapter go; gs://BUCKET/PATH is mounted
                 with gcsfuse on every worker (shared by all hosts, survives preemption)
  --config       YAML config, relative to the code directory on the workers (default: the
                 trainer's offline SmolLM2 demo)
  --stage        shorthand for --set run.stage=STAGE
  --set          trainer override, repeatable (e.g. --set run.max_steps=50); a gs:// value
                 (e.g. model.adapter=gs://BUCKET/mntp/adapter) is mounted like --output-dir

Re-running the same command after a stop, crash or preemption resumes from the last
checkpoint in --output-dir. Logs: ~/REMOTE_DIR/logs/worker-N.log on worker N (logs.sh)."
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
[[ -n "$OUTPUT_DIR" ]] || usage_error "missing --output-dir (e.g. gs://my-bucket/llama3-8b-mntp)"
[[ "$OUTPUT_DIR" =~ ^[A-Za-z0-9._/:=-]+$ ]] ||
    usage_error "--output-dir '$OUTPUT_DIR': use letters, digits and . _ - / = only"
[[ -z "$STAGE" || "$STAGE" =~ ^(mntp|simcse|supervised)$ ]] ||
    usage_error "--stage '$STAGE': choose mntp, simcse or supervised"
require_gcloud
gcs_path "$OUTPUT_DIR"
output="$MOUNTED"
if [[ "$OUTPUT_DIR" != gs://* ]]; then
    note "warning: a local --output-dir lives on each worker's disk: it is lost with the VM and not"
    note "shared between hosts, so multi-host checkpoints and resume after preemption need gs://"
fi

train=("$(remote_python)" -m llm2vec_jax.train)
[[ -z "$CONFIG" ]] || train+=(--config "$(printf '%q' "$CONFIG")")
[[ -z "$STAGE" ]] || train+=(--stage "$STAGE")
for item in "${SETS[@]}"; do
    if [[ "${item#*=}" == gs://* ]]; then
        gcs_path "${item#*=}"
        train+=(--set "\"${item%%=*}=$MOUNTED\"")
    else
        train+=(--set "$(printf '%q' "$item")")
    fi
done
# Last, so that it wins over a run.output_dir in --set or in the config.
train+=(--set "\"run.output_dir=$output\"")

# The worker number and the workers' addresses come from the TPU metadata server. On a
# multi-host slice they are handed to the trainer as LLM2VEC_JAX_* (llm2vec_jax/distributed.py):
# an ssh shell on a TPU VM has no variable that would tell it that it is one process of many,
# and without jax.distributed the hosts would not form one job (orbax needs it to commit a
# multi-host checkpoint). Worker 0 is the coordinator, on JAX's TPU coordinator port.
# The pid file guards against two trainers on one host (they would fight over the TPU), and
# setsid puts the trainer in its own process group, which outlives the ssh session and lets
# stop.sh signal the whole group.
remote="set -euo pipefail
cd $(printf '%q' "$REMOTE_DIR") && mkdir -p logs
md() { curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/\$1; }
W=\$(md agent-worker-number || echo 0)
HOSTS=\$(md worker-network-endpoints | tr , '\\n' | cut -d: -f3 || true)
N=\$(printf '%s\\n' \"\$HOSTS\" | grep -c . || true)
if [ \"\$N\" -gt 1 ]; then export LLM2VEC_JAX_COORDINATOR=\$(printf '%s\\n' \"\$HOSTS\" | head -n 1):8476 LLM2VEC_JAX_NUM_PROCESSES=\$N LLM2VEC_JAX_PROCESS_ID=\$W; fi
if [ -f logs/train.pid ] && kill -0 \"\$(cat logs/train.pid)\" 2>/dev/null; then echo \"worker \$W: already running (pid \$(cat logs/train.pid)); run stop.sh first\" >&2; exit 1; fi
${MOUNT_CMDS}PYTHONUNBUFFERED=1 setsid nohup ${train[*]} > logs/worker-\$W.log 2>&1 < /dev/null &
echo \$! > logs/train.pid
echo \"worker \$W of \$N: pid \$! log \$PWD/logs/worker-\$W.log\""
note "on every worker: one trainer process (jax.distributed joins them into one job)"
tpu_ssh all "$remote"
note "follow it with: tpu_scripts/logs.sh --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT} --follow"
