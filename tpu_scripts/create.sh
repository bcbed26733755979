#!/usr/bin/env bash
# Create a Cloud TPU VM (or a queued resource) for llm2vec-jax.
SCRIPT_GROUPS="create"
USAGE="usage: tpu_scripts/create.sh --name NAME --zone ZONE --accelerator-type TYPE
                             [--project PROJECT] [--version RUNTIME] [--spot] [--queued]
                             [--wait] [--recreate] [--dry-run]

  --accelerator-type  v4-8, v4-32, v5p-8, v5litepod-8, v5litepod-16, v6e-8, ...
  --version           TPU runtime; default per family: v2-v4 tpu-ubuntu2204-base,
                      v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot              preemptible capacity (much cheaper; can be reclaimed at any time)
  --queued            request through a queued resource (waits for capacity instead of failing)
  --wait              with --queued: return only once the TPU is ACTIVE
  --recreate          delete NAME first (after a preemption: a preempted spot VM or a
                      suspended queued resource must be deleted before it can come back)
  --dry-run           print the gcloud commands without running them"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
[[ -n "$ACCELERATOR" ]] || usage_error "missing --accelerator-type"
accelerator_info
VERSION="${VERSION:-$(default_runtime_version "$FAMILY")}"
require_gcloud
location_flags

note "$ACCELERATOR: $HOSTS host(s); runtime $VERSION"
if ((QUEUED)); then
    kind=(gcloud compute tpus queued-resources)
    delete_flags=(--force --quiet)  # --force also deletes the TPU the request holds
else
    kind=(gcloud compute tpus tpu-vm)
    delete_flags=(--quiet)
fi

if ((RECREATE)); then
    if ((DRY_RUN)) || "${kind[@]}" describe "$NAME" "${LOCATION[@]}" >/dev/null 2>&1; then
        note "delete $NAME (if it exists) so that it can be created again"
        run "${kind[@]}" delete "$NAME" "${LOCATION[@]}" "${delete_flags[@]}"
    fi
fi

spot=()
((SPOT)) && spot=(--spot)
if ((QUEUED)); then
    run "${kind[@]}" create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
        --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" "${spot[@]}"
    if ((WAIT)); then
        note "waiting for queued resource $NAME to become ACTIVE"
        state_cmd=("${kind[@]}" describe "$NAME" "${LOCATION[@]}" --format=value\(state.state\))
        printf '+ %s  # every 30 s\n' "$(quote_cmd "${state_cmd[@]}")"
        while ! ((DRY_RUN)); do
            state="$("${state_cmd[@]}")"
            case "$state" in
                ACTIVE) echo "$NAME is ACTIVE"; break ;;
                FAILED|SUSPENDED) echo "$NAME is $state: see the describe output above" >&2; exit 1 ;;
                *) echo "$(date +%H:%M:%S) $NAME: $state"; sleep 30 ;;
            esac
        done
    fi
else
    # tpu-vm create returns once the VM is ready.
    run "${kind[@]}" create "$NAME" "${LOCATION[@]}" \
        --accelerator-type="$ACCELERATOR" --version="$VERSION" "${spot[@]}"
fi
