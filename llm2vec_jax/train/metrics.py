"""What a run reports, from the main process only: metrics as JSONL, TensorBoard scalars
(tensorboardX) and Weights & Biases when asked for, a jax.profiler trace of chosen steps,
and a progress bar."""

from __future__ import annotations

import json
import logging

import jax
from etils import epath

from ..checkpoints.io import join
from ..distributed import is_main_process

log = logging.getLogger("llm2vec_jax.train")


class MetricsWriter:
    """JSONL always; TensorBoard and Weights & Biases when asked for and installed. Main
    process only. ``config``: the run's settings, recorded with a W&B run."""

    def __init__(self, output_dir: str, tensorboard: bool, *, wandb: bool = False,
                 wandb_project: str | None = None, config: dict | None = None):
        self.enabled = is_main_process()
        self.file = None
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.file = epath.Path(join(output_dir, "metrics.jsonl")).open("a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(join(output_dir, "tensorboard"))
            except ImportError:
                log.warning("tensorboard logging asked for but tensorboardX is not installed "
                            "(pip install tensorboardX); writing metrics.jsonl only")
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                log.warning("run.wandb asked for but wandb is not installed (pip install "
                            "wandb); writing metrics.jsonl only")
            else:
                self.wandb = wandb_lib.init(project=wandb_project or "llm2vec-jax",
                                            dir=output_dir, config=config)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{split}/{key}", float(value), step)
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": float(v) for k, v in metrics.items()}, step=step)

    def close(self):
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class StepProfiler:
    """A ``jax.profiler`` trace of steps ``start..stop`` (1-based, as logged) written to
    ``directory`` by the main process; ``steps`` None: no trace."""

    def __init__(self, steps: tuple[int, int] | None, directory: str):
        self.steps = steps if is_main_process() else None
        self.directory = directory
        self.active = False

    def before(self, step: int) -> None:
        """Called before step ``step`` (1-based) runs."""
        if self.steps is not None and step == self.steps[0]:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, outputs) -> None:
        """Called after step ``step`` was dispatched; ``outputs``: its results, waited for
        before the trace stops so it holds the steps' device work."""
        if self.active and step == self.steps[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def progress_bar(run, start: int):
    from tqdm.auto import tqdm
    return tqdm(total=run.max_steps, initial=start, desc=f"{run.stage}", unit="step",
                disable=not (run.progress_bar and is_main_process()), dynamic_ncols=True)
