"""What a run reports: metrics as JSONL (and TensorBoard scalars when asked for) and a
progress bar, from the main process only."""

from __future__ import annotations

import json
import logging

from etils import epath

from ..checkpoints.io import join
from ..distributed import is_main_process

log = logging.getLogger("llm2vec_jax.train")


class MetricsWriter:
    """JSONL always; TensorBoard when asked for and installed. Main process only."""

    def __init__(self, output_dir: str, tensorboard: bool):
        self.enabled = is_main_process()
        self.file = None
        self.tb = None
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

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{split}/{key}", float(value), step)

    def close(self):
        if self.file:
            self.file.close()


def progress_bar(run, start: int):
    from tqdm.auto import tqdm
    return tqdm(total=run.max_steps, initial=start, desc=f"{run.stage}", unit="step",
                disable=not (run.progress_bar and is_main_process()), dynamic_ncols=True)
