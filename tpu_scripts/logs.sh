#!/usr/bin/env bash
# Show a worker's training log (process 0 = worker 0 has the progress bar and the metrics).
SCRIPT_GROUPS="logs"
USAGE="usage: tpu_scripts/logs.sh --name NAME --zone ZONE [--worker N|all] [--lines 100]
                           [--follow] [--project PROJECT] [--queued] [--dry-run]"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
[[ "$WORKER" =~ ^([0-9]+|all)$ ]] || usage_error "--worker '$WORKER': a worker number or 'all'"
[[ "$LINES" =~ ^[0-9]+$ ]] || usage_error "--lines '$LINES': a number"
require_gcloud
follow=""
((FOLLOW)) && follow=" -F"
# worker-*.log: each worker holds only its own log, so one glob serves --worker=all too.
tpu_ssh "$WORKER" "tail -n $LINES$follow $(printf '%q' "$REMOTE_DIR")/logs/worker-*.log"
