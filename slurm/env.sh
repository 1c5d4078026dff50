# shellcheck shell=bash
# Job environment for clinsynth. Every Slurm job runs `source slurm/env.sh` first (the
# launcher puts it in each job's setup lines), on the batch host and before srun starts
# the tasks.
#
# On the test cluster (slurm/up.sh) this is almost a no-op. For a real site do not
# edit this file: create slurm/env.local.sh (git-ignored; it may start
# as a copy of this file) and set what the site needs there. It is sourced FIRST, and
# everything below only fills in what is still unset, so the site's values win.
#
# Knobs (set them in env.local.sh or in the environment sbatch exports to the job):
#   CLINSYNTH_MODULES   space-separated modules to `module load`, e.g. "cuda/12.4 nccl/2.21"
#   CLINSYNTH_VENV      a Python virtualenv to activate, e.g. /shared/envs/clinsynth
#   HF_HOME             Hugging Face cache; point it at shared storage on a real site
#   HF_HUB_OFFLINE      default 1: compute nodes usually have no internet; pre-fetch models
#   WANDB_MODE          passed through unchanged (online / offline / disabled)
#   NCCL_SOCKET_IFNAME  network interface for NCCL bootstrap/sockets, e.g. ib0 or ^lo,docker
#   NCCL_IB_DISABLE     1 on sites without InfiniBand (Ethernet only)
#   NCCL_DEBUG          default WARN; INFO when debugging multi-node hangs
#
# Safe to source under `set -euo pipefail`. Returns 0, except when CLINSYNTH_VENV names a
# missing venv (returns 1, which ends a job script that runs under `set -e`).

_cs_dir=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)

# 1. site overrides (guarded: env.local.sh may be a copy of this file)
if [ -z "${_CLINSYNTH_ENV_LOCAL:-}" ] && [ -f "$_cs_dir/env.local.sh" ] \
   && [ "$(basename "${BASH_SOURCE[0]:-$0}")" != "env.local.sh" ]; then
  _CLINSYNTH_ENV_LOCAL=1
  # shellcheck source=/dev/null
  source "$_cs_dir/env.local.sh"
  unset _CLINSYNTH_ENV_LOCAL
fi

# 2. environment modules (Lmod / Environment Modules), only where the site has them
if [ -n "${CLINSYNTH_MODULES:-}" ]; then
  if ! command -v module >/dev/null 2>&1; then
    # batch shells are not login shells: `module` may not be defined yet
    for _cs_f in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash; do
      # shellcheck source=/dev/null
      [ -r "$_cs_f" ] && { source "$_cs_f"; break; }
    done
  fi
  if command -v module >/dev/null 2>&1; then
    # module purge   # uncomment for a clean slate on sites with sticky default modules
    for _cs_m in $CLINSYNTH_MODULES; do
      module load "$_cs_m" || echo "slurm/env.sh: WARNING: module load $_cs_m failed" >&2
    done
  else
    echo "slurm/env.sh: WARNING: CLINSYNTH_MODULES is set but there is no 'module' command" >&2
  fi
fi

# 3. Python environment
if [ -n "${CLINSYNTH_VENV:-}" ]; then
  if [ -f "$CLINSYNTH_VENV/bin/activate" ]; then
    if [ "${VIRTUAL_ENV:-}" != "$CLINSYNTH_VENV" ]; then
      # activate scripts are not written for `set -u`
      case $- in *u*) _cs_u=1; set +u ;; *) _cs_u= ;; esac
      # shellcheck source=/dev/null
      source "$CLINSYNTH_VENV/bin/activate"
      [ -n "$_cs_u" ] && set -u
    fi
  else
    echo "slurm/env.sh: ERROR: CLINSYNTH_VENV=$CLINSYNTH_VENV has no bin/activate" >&2
    unset _cs_dir _cs_f _cs_m
    return 1   # fail early rather than run with the wrong Python
  fi
fi
# conda instead of a venv (template):
#   source /path/to/miniforge3/etc/profile.d/conda.sh && conda activate clinsynth

# 4. Hugging Face: offline by default, cache wherever HF_HOME says
export HF_HOME="${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-$HF_HUB_OFFLINE}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# 5. Weights & Biases: pass WANDB_MODE (and WANDB_DIR etc.) through as given
if [ -n "${WANDB_MODE:-}" ]; then export WANDB_MODE; fi

# 6. multi-node communication (NCCL on GPUs; gloo on CPU follows the same interface)
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
if [ -n "${NCCL_SOCKET_IFNAME:-}" ]; then
  export NCCL_SOCKET_IFNAME
  export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$NCCL_SOCKET_IFNAME}"
fi
if [ -n "${NCCL_IB_DISABLE:-}" ]; then export NCCL_IB_DISABLE; fi
# Site hints (set in env.local.sh):
#   export NCCL_SOCKET_IFNAME=ib0        # or eth0 / ^lo,docker0 -- the inter-node network
#   export NCCL_IB_DISABLE=1             # no InfiniBand: NCCL over TCP sockets
#   export NCCL_IB_HCA=mlx5              # pick HCAs on multi-rail InfiniBand nodes
#   export NCCL_DEBUG=INFO               # see which transport NCCL picked

# 7. threads and output
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export OMP_NUM_THREADS="${CLINSYNTH_OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
elif [ -n "${CLINSYNTH_OMP_NUM_THREADS:-}" ]; then
  export OMP_NUM_THREADS="$CLINSYNTH_OMP_NUM_THREADS"
fi
export PYTHONUNBUFFERED=1

unset _cs_dir _cs_f _cs_m _cs_u
true
