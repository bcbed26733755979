"""Multi-host runs on JAX's own multi-controller runtime (``jax.distributed``).

``maybe_initialize_distributed()`` calls ``jax.distributed.initialize`` only when the
environment describes several processes; a single-host run never touches it. Call it before
anything asks JAX for devices.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def _multi_process_environment() -> dict | None:
    """initialize() keyword arguments when this is one process of many, else None."""
    env = os.environ
    if env.get("LLM2VEC_JAX_COORDINATOR"):  # explicit: host:port, count, id
        return dict(coordinator_address=env["LLM2VEC_JAX_COORDINATOR"],
                    num_processes=int(env["LLM2VEC_JAX_NUM_PROCESSES"]),
                    process_id=int(env["LLM2VEC_JAX_PROCESS_ID"]))
    if env.get("JAX_COORDINATOR_ADDRESS"):   # JAX reads its own variables
        return {}
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):  # a multi-host TPU slice
        return {}
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}                            # cluster auto-detection inside JAX
    return None


def maybe_initialize_distributed() -> None:
    global _initialized
    if _initialized:
        return
    kwargs = _multi_process_environment()
    if kwargs is not None:
        jax.distributed.initialize(**kwargs)
        log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    _initialized = True


def is_main_process() -> bool:
    """Only process 0 writes exports, logs and metrics."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
