"""A checkpoint before exit on SIGTERM, the preemption notice of TPU VMs, GKE and SLURM.

One process: a SIGTERM handler sets a flag, and the loop saves at the end of the step in
flight, then stops with ``Preempted`` (the CLI exits with 143, 128 + SIGTERM, as a process
killed by that signal would). Several processes must save the same step together (the
write is collective), so there JAX's preemption sync point decides instead: JAX's
coordination service hears the notice on any host and names one step for all of them
(``multihost_utils.reached_preemption_sync_point``, enabled by
``jax_enable_preemption_service``).
"""

from __future__ import annotations

import signal
import threading

import jax


class Preempted(Exception):
    """Training stopped on a preemption notice, after saving a checkpoint at ``step``."""

    def __init__(self, step: int, output_dir: str):
        self.step = step
        super().__init__(f"stopped by SIGTERM after step {step}, saved as a checkpoint in "
                         f"{output_dir}; run the same command again to resume")


class PreemptionWatch:
    """``reached(step)``, called once after every step: save and stop now?"""

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self.signalled = False
        self._previous = None
        # signal handlers can only be set from the main thread (a notebook cell runs there).
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signalled = True

    def reached(self, step: int) -> bool:
        if self.multi_process:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
