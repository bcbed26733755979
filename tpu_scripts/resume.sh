#!/usr/bin/env bash
# After a preemption (spot VM or queued resource): delete and recreate the TPU, set it up
# again and relaunch the same run; the trainer resumes from the last checkpoint in the
# gs:// output directory. If the VM is still there, re-running launch.sh is enough.
SCRIPT_GROUPS="create setup launch"
USAGE="usage: tpu_scripts/resume.sh --name NAME --zone ZONE --accelerator-type TYPE
                             --output-dir gs://BUCKET/RUN [--config FILE] [--stage STAGE]
                             [--set key=value ...] [--spot] [--queued] [--project PROJECT]
                             [--repo URL [--branch BRANCH]] [--version RUNTIME] [--dry-run]

Runs create.sh --recreate (--wait with --queued), setup.sh and launch.sh with the options
each of them takes; give the same options as for the first run."
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
[[ -n "$ACCELERATOR" ]] || usage_error "missing --accelerator-type"
accelerator_info
[[ "$OUTPUT_DIR" == gs://* ]] ||
    usage_error "--output-dir must be gs://BUCKET/PATH: the checkpoints have to outlive the VM"
((RECREATE)) || ARGS_create+=(--recreate)
((WAIT || !QUEUED)) || ARGS_create+=(--wait)
note "1/3 recreate $NAME"
bash "$TPU_SCRIPTS_DIR/create.sh" "${ARGS_common[@]}" "${ARGS_create[@]}"
note "2/3 set up the workers"
bash "$TPU_SCRIPTS_DIR/setup.sh" "${ARGS_common[@]}" "${ARGS_setup[@]}"
note "3/3 relaunch; the trainer restores the latest checkpoint in $OUTPUT_DIR"
bash "$TPU_SCRIPTS_DIR/launch.sh" "${ARGS_common[@]}" "${ARGS_launch[@]}"
