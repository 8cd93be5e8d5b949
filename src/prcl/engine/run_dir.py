"""The run folder (``train.out_dir``): where a run writes, and what a resumed run reads back.

It holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged step and per evaluation),
``checkpoints/last.pt`` and ``best.pt`` (with ``best.json``, the best score) and, at the end, ``summary.json``
and ``curves.png`` (with matplotlib); with tensorboard installed and ``train.tensorboard`` on, ``tensorboard/``
holds the scalars and, per evaluation, the predictions on the first validation images. ``.validated.json`` is
the data check's cache; ``.lock`` is the file the running training locks.

One run folder, one writer: a training holds an OS lock (``flock``) on ``.lock`` from before it writes anything
until the end of ``fit``, and a second training or resume on the folder is refused with one line naming the
process that holds it. The OS releases the lock when that process ends, killed or not, so no stale lock is left.
Reading (``prcl eval``, ``prcl predict`` on its checkpoints) needs no lock: checkpoints are replaced atomically.

Only the main process writes (and locks): every method here that writes does nothing in the other processes.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from prcl import distributed
from prcl.checkpoint import load_checkpoint
from prcl.config import Config, config_from_dict, resume_conflicts, resume_refusal, save_config
from prcl.data.validate import check_output_folder
from prcl.errors import UserError
from prcl.io import WriteError, atomic_write, read_records, reason_of, remove_leftovers, write_json

try:
    import fcntl
except ImportError:  # Windows: no flock, so no run-folder lock (docs/usage.md)
    fcntl = None

CHECKPOINT_FORMAT = "prcl-checkpoint-2"
BEST_SCORE = "best.json"  # the best validation mIoU, written with best.pt (last.pt is saved before evaluating)
LOCK_NAME = ".lock"  # locked by the training that writes the folder; holds its pid and host while it runs
VALIDATION_CACHE = ".validated.json"


def _is_test(record: dict) -> bool:
    return record.get("type") == "eval" and record.get("split") == "test"


@contextmanager
def write_errors(path: Path):
    """A failed write of ``path`` (full disk, permissions) as one line saying how to go on."""
    try:
        yield
    except WriteError as error:
        raise UserError(f"cannot write {error.path}: {error.reason}; free space or fix the folder, "
                        "then continue with --resume auto") from None
    except OSError as error:
        raise UserError(f"cannot write {path}: {reason_of(error)}; free space or fix the folder, "
                        "then continue with --resume auto") from None


class RunDir:
    """The paths of one run's folder, the checks before a run starts in it, and the files written to it."""

    def __init__(self, out_dir: str | Path, main: bool) -> None:
        self.path = Path(out_dir).expanduser()
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.config_file = self.path / "config.yaml"
        self.lock_file = self.path / LOCK_NAME
        self.main = main
        self._lock: IO[str] | None = None  # the open lock file while this process holds the lock

    def say(self, line: str) -> None:
        """One ``prcl:`` line on stderr from the main process."""
        if self.main:
            print(f"prcl: {line}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------- before the run
    def check_writable(self) -> None:
        """The run folder can be created and written (checked before anything is built; creates nothing)."""
        if self.main:
            check_output_folder(self.checkpoints, "train.out_dir")

    def lock(self) -> None:
        """Hold the folder's lock (main process), or raise UserError naming the process that holds it.

        Only an existing folder is locked: a new run's folder is created, and then locked, by :meth:`prepare`,
        after every check passed. Held until :meth:`unlock` (the end of ``fit``) or the end of the process.
        """
        if not self.main or self._lock is not None or fcntl is None or not self.path.is_dir():
            return
        try:
            handle = os.fdopen(os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot lock the run folder {self.path}: cannot open {self.lock_file} "
                            f"({reason_of(error)}); make it writable or set train.out_dir to another folder") from None
        if not self._flock(handle):
            gc.collect()  # a Trainer of this process that nobody refers to any more may still hold it
            if not self._flock(handle):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.path} is in use by a running training ({holder}); wait for it to end or "
                                f"stop it, or set train.out_dir to another folder")
        try:  # who holds it, for the message of a refused training; the lock itself is already held
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        except OSError:
            pass
        self._lock = handle

    def _flock(self, handle) -> bool:
        """Lock ``handle`` without waiting: False when another holds the lock. A file system without locks
        (some network ones) is a warning: the lock is then not kept."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return False
            self.say(f"warning: cannot lock {self.lock_file} ({reason_of(error)}); make sure no other training "
                     "writes into this folder")
        return True

    def unlock(self) -> None:
        """Let go of the folder's lock (emptying the lock file: nobody holds it)."""
        handle, self._lock = self._lock, None
        if handle is None:
            return
        try:
            handle.truncate(0)
            handle.flush()
        except OSError:
            pass
        finally:
            handle.close()  # closing the file releases the lock

    @property
    def validation_cache(self) -> Path | None:
        """Where the data check keeps what it learnt: ``.validated.json`` in an existing run folder; None for a
        new run, whose folder is created only once every check passed."""
        return self.path / VALIDATION_CACHE if self.path.is_dir() else None

    def checkpoint_to_resume(self, cfg: Config, resume: str | None, force: bool) -> dict | None:
        """The checkpoint to resume (loaded on the CPU) after checking that ``cfg`` may continue it; None for a
        new run. ``resume``: None, "auto" (``last.pt`` when there is one) or a checkpoint's path."""
        restarts = distributed.restart_count()
        if resume is None and restarts > 0:  # torchrun --max-restarts started this process again after a failure
            self.say(f"restart {restarts} by torchrun: continuing the run from its last checkpoint")
            resume = "auto"
        if resume is None:
            if self.last_checkpoint.is_file():
                raise UserError(f"{self.path} already holds a run; continue it with --resume auto "
                                f"or set train.out_dir to a new folder")
            return None
        path = self.last_checkpoint if resume == "auto" else Path(resume).expanduser()
        if not path.is_file():
            if resume != "auto":
                raise UserError(f"checkpoint to resume not found: {path}")
            self.say(f"--resume auto: no checkpoint in {self.checkpoints}, starting a new run")
            return None
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path} is not a {CHECKPOINT_FORMAT} training checkpoint "
                            "(written by another prcl version, or not by `prcl train`)")
        stored = config_from_dict(state.get("config") or {}, f"checkpoint {path}")
        refusal = resume_refusal(*resume_conflicts(stored, cfg), force, str(self.path))
        if refusal:
            raise UserError(refusal)
        self.say(f"resuming {self.path} from step {state['step']} ({path})")
        return state

    def best_score(self) -> float | None:
        """The mIoU in ``best.json`` (None without one, or when it is damaged): a best.pt written after the
        evaluation that followed last.pt."""
        path = self.checkpoints / BEST_SCORE
        if not path.is_file():
            return None
        try:
            return float(json.loads(path.read_text())["miou"])
        except (ValueError, KeyError, TypeError):
            return None  # a damaged score file: the next evaluations decide again

    def prepare(self, cfg: Config, step: int) -> None:
        """Create and lock the folder, clean what an interrupted run left (temporary files of dead writers,
        metric lines past ``step``) and write config.yaml; every process waits until that is done."""
        if self.main:
            with write_errors(self.checkpoints):
                self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.lock()
            for folder in (self.path, self.checkpoints):
                remove_leftovers(folder)  # not those of a `prcl eval` still writing beside the checkpoints
            with write_errors(self.metrics):
                self._trim_metrics(step)
            with write_errors(self.config_file):
                save_config(cfg, self.config_file)
        distributed.barrier()

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines past ``step`` (written by an interrupted run after its checkpoint) and a torn last
        line (a crash or a full disk during the append), with a warning."""
        path = self.metrics
        if not path.is_file():
            return
        records, torn = read_records(path, then=", then resume")
        if torn:
            self.say(f"warning: dropped a torn last line of {path} (an interrupted write)")
        self._rewrite_metrics([record for record in records if record.get("step", 0) <= step])

    def _rewrite_metrics(self, records: list[dict]) -> None:
        with atomic_write(self.metrics, "w") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))

    # -------------------------------------------------------------------------------- during the run
    def append(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl with a single write: a crash leaves at most a torn last line
        (dropped on resume). A test evaluation takes the place of one already logged at its step (a run resumed at
        its end evaluates the test split again): one test line per step, the old one kept until the new is in."""
        if not self.main:
            return
        with write_errors(self.metrics):
            if _is_test(record) and self.metrics.is_file():
                records, _ = read_records(self.metrics, then=", then resume")
                kept = [old for old in records if not (_is_test(old) and old.get("step") == record.get("step"))]
                if len(kept) < len(records):
                    self._rewrite_metrics([*kept, record])
                    return
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def write_best_score(self, step: int, miou: float) -> None:
        """best.json beside best.pt: last.pt was written before the evaluation that found this score."""
        if self.main:
            path = self.checkpoints / BEST_SCORE
            with write_errors(path):
                write_json(path, {"step": step, "miou": miou})

    # ---------------------------------------------------------------------------------- after the run
    def finish(self, summary: dict) -> None:
        """summary.json and curves.png."""
        if self.main:
            with write_errors(self.path / "summary.json"):
                write_json(self.path / "summary.json", summary)
            self._write_curves()

    def _write_curves(self) -> None:
        """``curves.png`` from metrics.jsonl; skipped without matplotlib (the optional ``plots`` extra)."""
        from prcl.infer.plots import plot_runs

        try:
            plot_runs([self.path])
        except ImportError:
            return
        except (OSError, ValueError, UserError) as error:  # the run itself is done: a picture must not fail it
            self.say(f"warning: could not draw {self.path / 'curves.png'}: {error}")
