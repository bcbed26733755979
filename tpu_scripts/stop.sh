#!/usr/bin/env bash
# Stop the trainer on every worker (the process group launch.sh started).
SCRIPT_GROUPS="stop"
USAGE="usage: tpu_scripts/stop.sh --name NAME --zone ZONE [--project PROJECT] [--queued]
                           [--force] [--dry-run]

  --force    SIGKILL at once (default: SIGTERM, then SIGKILL after 30 s)

Stopping loses at most the steps since the last checkpoint (run.save_every): an interrupted
checkpoint write is never committed, and launch.sh resumes from the previous one."
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require_gcloud
signal=TERM
((FORCE)) && signal=KILL
remote="cd $(printf '%q' "$REMOTE_DIR") 2>/dev/null && [ -f logs/train.pid ] || { echo \"\$(hostname): nothing to stop\"; exit 0; }
pid=\$(cat logs/train.pid)
if kill -0 \$pid 2>/dev/null; then
  kill -$signal -- -\$pid || true
  for i in \$(seq 30); do kill -0 \$pid 2>/dev/null || break; sleep 1; done
  if kill -0 \$pid 2>/dev/null; then kill -KILL -- -\$pid || true; fi
  echo \"\$(hostname): stopped pid \$pid\"
else
  echo \"\$(hostname): pid \$pid was not running\"
fi
rm -f logs/train.pid"
tpu_ssh all "$remote"
