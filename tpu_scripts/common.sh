# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source this file.)
# Shared by the tpu_scripts/*.sh: one option table, the printing/dry-run `run`, and the
# gcloud wrappers, so the scripts only differ in what they do, not in how they parse.
#
# A script sets SCRIPT_GROUPS (which option groups it accepts) and USAGE, sources this file,
# then calls `parse_args "$@"`. Groups: common (every script), create, setup, launch, logs, stop.

set -euo pipefail

TPU_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TPU_SCRIPTS_DIR/.." && pwd)"

# -- option values (defaults) ------------------------------------------------------------------
NAME=""
ZONE=""
PROJECT=""
DRY_RUN=0
# Accepted by every script so that one set of options serves them all, but only create.sh
# needs it: create.sh names the queued resource's node NAME, so ssh/scp reach it as NAME.
QUEUED=0
# Relative to the remote home directory: `gcloud ... ssh --command` starts there.
REMOTE_DIR="llm2vec-jax"
# The jax the project requires needs Python >= 3.11; TPU VM images ship Ubuntu 22.04's 3.10,
# so setup.sh builds a uv-managed virtual environment and launch.sh runs its python.
VENV="l2v-venv"
PYTHON_VERSION="3.11"
ACCELERATOR=""
VERSION=""
SPOT=0
RECREATE=0
WAIT=0
REPO_URL=""
BRANCH=""
CONFIG=""
STAGE=""
OUTPUT_DIR=""
SETS=()
WORKER="0"
LINES=100
FOLLOW=0
FORCE=0
# The raw options per group, so resume.sh can hand each script exactly its own.
ARGS_common=()
ARGS_create=()
ARGS_setup=()
ARGS_launch=()
ARGS_logs=()
ARGS_stop=()

usage_error() {
    printf '%s: error: %s\n\n%s\n' "$(basename "$0")" "$1" "$USAGE" >&2
    exit 2
}

accepts() { [[ " common $SCRIPT_GROUPS " == *" $1 "* ]]; }

# parse_args "$@": fills the variables above; unknown options, options of another script,
# missing values → usage on stderr and exit 2.
parse_args() {
    local opt value group takes_value
    while (($#)); do
        opt="$1"
        value=""
        if [[ "$opt" == --*=* ]]; then
            value="${opt#*=}"
            opt="${opt%%=*}"
            set -- "$opt" "$value" "${@:2}"
        fi
        case "$opt" in
            -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
            --name|--zone|--project|--remote-dir) group=common; takes_value=1 ;;
            --dry-run|--queued) group=common; takes_value=0 ;;
            --accelerator-type|--version) group=create; takes_value=1 ;;
            --spot|--recreate|--wait) group=create; takes_value=0 ;;
            --repo|--branch|--python) group=setup; takes_value=1 ;;
            --config|--set|--stage|--output-dir) group=launch; takes_value=1 ;;
            --worker|--lines) group=logs; takes_value=1 ;;
            --follow) group=logs; takes_value=0 ;;
            --force) group=stop; takes_value=0 ;;
            *) usage_error "unknown argument '$opt'" ;;
        esac
        accepts "$group" || usage_error "$opt is not an option of $(basename "$0")"
        if ((takes_value)); then
            if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
                usage_error "$opt needs a value"
            fi
            value="$2"
            shift 2
        else
            value=1
            shift
        fi
        if ((takes_value)); then
            eval "ARGS_$group+=(\"\$opt\" \"\$value\")"
        else
            eval "ARGS_$group+=(\"\$opt\")"
        fi
        case "$opt" in
            --name) NAME="$value" ;;
            --zone) ZONE="$value" ;;
            --project) PROJECT="$value" ;;
            --remote-dir) REMOTE_DIR="$value" ;;
            --dry-run) DRY_RUN=1 ;;
            --queued) QUEUED=1 ;;
            --accelerator-type) ACCELERATOR="$value" ;;
            --version) VERSION="$value" ;;
            --spot) SPOT=1 ;;
            --recreate) RECREATE=1 ;;
            --wait) WAIT=1 ;;
            --repo) REPO_URL="$value" ;;
            --branch) BRANCH="$value" ;;
            --python) PYTHON_VERSION="$value" ;;
            --config) CONFIG="$value" ;;
            --set) [[ "$value" =~ ^[A-Za-z0-9_.]+= ]] ||
                       usage_error "--set expects key=value (e.g. run.max_steps=50), got '$value'"
                   SETS+=("$value") ;;
            --stage) STAGE="$value" ;;
            --output-dir) OUTPUT_DIR="$value" ;;
            --worker) WORKER="$value" ;;
            --lines) LINES="$value" ;;
            --follow) FOLLOW=1 ;;
            --force) FORCE=1 ;;
        esac
    done
    [[ -n "$NAME" ]] || usage_error "missing --name"
    [[ -n "$ZONE" ]] || usage_error "missing --zone"
    [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
        usage_error "--name '$NAME': use lowercase letters, digits and '-' (a GCP resource name)"
}

# -- printing and running ----------------------------------------------------------------------

# A command line as something one can paste into a shell: words with shell-special
# characters in single quotes.
quote_cmd() {
    local out="" word
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./=:@,+%^-]+$ ]]; then
            out+="$word "
        else
            out+="'${word//\'/\'\\\'\'}' "
        fi
    done
    printf '%s\n' "${out% }"
}

# run CMD...: print it; execute it unless --dry-run.
run() {
    printf '+ %s\n' "$(quote_cmd "$@")"
    ((DRY_RUN)) || "$@"
}

note() { printf '# %s\n' "$*"; }

require_gcloud() {
    ((DRY_RUN)) || command -v gcloud >/dev/null ||
        { echo "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)" >&2; exit 1; }
}

# The location flags every gcloud tpu command takes.
location_flags() {
    LOCATION=(--zone="$ZONE")
    [[ -z "$PROJECT" ]] || LOCATION+=(--project="$PROJECT")
}

# tpu_ssh WORKER COMMAND: run a shell command on one worker (0, 1, …) or on all of them
# at once (`all`), which gcloud does in parallel.
tpu_ssh() {
    location_flags
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2"
}

tpu_scp() {  # tpu_scp LOCAL_FILE REMOTE_PATH: to every worker
    location_flags
    run gcloud compute tpus tpu-vm scp "$1" "$NAME:$2" "${LOCATION[@]}" --worker=all
}

# -- accelerators ------------------------------------------------------------------------------

# Sets FAMILY and HOSTS for ACCELERATOR, or fails with a usage error. v2/v3/v4/v5p names count
# TensorCores (2 per chip, 4 chips = 8 cores per host); v5litepod/v6e names count chips, and
# slices above 8 chips use 4-chip hosts.
accelerator_info() {
    local size
    [[ "$ACCELERATOR" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] ||
        usage_error "--accelerator-type '$ACCELERATOR': expected e.g. v4-8, v5p-8, v5litepod-16, v6e-8"
    FAMILY="${BASH_REMATCH[1]}"
    size="${BASH_REMATCH[2]}"
    case "$FAMILY" in
        v2|v3|v4|v5p) HOSTS=$(((size + 7) / 8)) ;;
        v5litepod|v6e) if ((size <= 8)); then HOSTS=1; else HOSTS=$(((size + 3) / 4)); fi ;;
    esac
}

default_runtime_version() {  # the TPU software version Google documents for each family
    case "$1" in
        v2|v3|v4) echo "tpu-ubuntu2204-base" ;;
        v5litepod) echo "v2-alpha-tpuv5-lite" ;;
        v5p) echo "v2-alpha-tpuv5" ;;
        v6e) echo "v2-alpha-tpuv6e" ;;
    esac
}

# -- remote paths ------------------------------------------------------------------------------

remote_python() { printf '%s' "\$HOME/$VENV/bin/python"; }

# The trainer reads and writes with ordinary file APIs (orbax checkpoints included), so a
# gs://BUCKET/PATH is mounted with gcsfuse at ~/gcs/BUCKET on every worker: all processes then
# see one shared directory, which multi-host checkpoints need, and it outlives the VM.
# gcs_path VALUE: sets MOUNTED to the worker-side path (a local path stays as it is) and adds
# the bucket's mount command to MOUNT_CMDS once.
MOUNT_CMDS=""
gcs_path() {
    local bucket rest mount
    MOUNTED="$1"
    [[ "$1" =~ ^gs://([^/]+)/?(.*)$ ]] || return 0
    bucket="${BASH_REMATCH[1]}"
    rest="${BASH_REMATCH[2]%/}"
    [[ "$bucket" =~ ^[a-z0-9][-a-z0-9._]*[a-z0-9]$ && "$rest" =~ ^[A-Za-z0-9._/=-]*$ ]] ||
        usage_error "'$1': expected gs://BUCKET/PATH (letters, digits, . _ - / = in PATH)"
    # --rename-dir-limit: orbax and the adapter export commit by renaming a directory.
    mount="mkdir -p \$HOME/gcs/$bucket && (mountpoint -q \$HOME/gcs/$bucket || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $bucket \$HOME/gcs/$bucket)"
    [[ "$MOUNT_CMDS" == *"$mount"* ]] || MOUNT_CMDS+="$mount"$'\n'
    MOUNTED="\$HOME/gcs/$bucket${rest:+/$rest}"
}
