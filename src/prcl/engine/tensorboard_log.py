"""TensorBoard scalars for a run (``train.tensorboard``): the logged train values and the evaluations.

Written under ``<out_dir>/tensorboard`` by the main process when the ``tensorboard`` package is installed
(``pip install 'prcl[tensorboard]'``); otherwise every method does nothing.
"""

from __future__ import annotations

from pathlib import Path


class TensorBoardLog:
    """``record(line)`` writes the numeric values of one metrics.jsonl line as scalars: ``train/<key>`` for
    train lines, ``<split>/<key>`` (e.g. ``valid/miou``) for evaluations. The writer opens on the first line."""

    def __init__(self, folder: Path | None, purge_step: int | None = None) -> None:
        self.folder, self.purge_step, self.writer = folder, purge_step, None

    def _open(self):
        if self.writer is None and self.folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                self.folder = None
                return None
            # purge_step (on resume): TensorBoard hides what an interrupted session wrote past the checkpoint
            self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step, flush_secs=30)
        return self.writer

    def record(self, line: dict) -> None:
        kind = line.get("type")
        prefix = line.get("split", "eval") if kind == "eval" else kind
        if prefix not in ("train", "valid", "test", "eval") or "step" not in line or self._open() is None:
            return
        for key, value in line.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, line["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
