"""Pictures of training: one PNG of curves from the ``metrics.jsonl`` of one or several runs.

Panels: the losses (loss, sup, unsup, prcl where logged), the learning rate (and lambda, the contrast
weight, on a second axis where logged), the validation mIoU at each evaluation, and images per second.
Several runs are overlaid, each in its own colour, labelled by its folder name. Needs matplotlib
(``pip install 'prcl[plots]'``); it is imported only when a picture is drawn.
"""

from __future__ import annotations

from pathlib import Path

from prcl.data.validate import check_output_file
from prcl.errors import UserError
from prcl.io import atomic_write, read_records, remove_leftovers

LOSSES = ("loss", "sup", "unsup", "prcl")
LOSS_STYLES = {"loss": "-", "sup": "--", "unsup": ":", "prcl": "-."}


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The train lines and the validation eval lines of ``<run_dir>/metrics.jsonl``; a torn last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; give a run folder written by `prcl train` (train.out_dir)")
    train, valid = [], []
    for record in read_records(path)[0]:  # a torn last line: the run was interrupted, or is still writing
        if record.get("type") == "train":
            train.append(record)
        elif record.get("type") == "eval" and record.get("split") == "valid" and record.get("miou") is not None:
            valid.append(record)
    return train, valid


def default_output(run_dirs: list[str | Path]) -> Path:
    """``<run>/curves.png`` for one run; ``comparison.png`` in the first run's parent folder for several."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "curves.png"
    return first.resolve().parent / "comparison.png"


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [p.resolve().name or str(p) for p in run_dirs]
    return [str(p) if names.count(name) > 1 else name for p, name in zip(run_dirs, names)]


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _figure_class():
    """matplotlib's Figure, drawn by the Agg renderer without pyplot (no backend or global state is touched)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("drawing curves needs matplotlib: pip install 'prcl[plots]'") from error
    return matplotlib, Figure


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Draw the curves of ``run_dirs`` into one PNG (written atomically) and return its path.

    UserError when a folder has no metrics.jsonl or the PNG cannot be written (both checked before drawing);
    ImportError when matplotlib is not installed.
    """
    if not run_dirs:
        raise UserError("give at least one run folder")
    dirs = [Path(d) for d in run_dirs]
    runs = [read_metrics(d) for d in dirs]  # every folder checked before drawing
    out_path = check_output_file(out if out is not None else default_output(dirs),
                                 "--out" if out is not None else "the picture (set --out)")
    remove_leftovers(out_path.parent, out_path.name)  # what a plot killed while writing left there
    matplotlib, Figure = _figure_class()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    figure = Figure(figsize=(12, 8))
    loss_ax, lr_ax, miou_ax, speed_ax = figure.subplots(2, 2, squeeze=False).flat
    lambda_ax = None
    for index, (label, (train, valid)) in enumerate(zip(_labels(dirs), runs)):
        colour = colours[index % len(colours)]
        for key in LOSSES:
            steps, values = _series(train, key)
            if steps:
                loss_ax.plot(steps, values, LOSS_STYLES[key], color=colour, label=f"{label}: {key}")
        steps, values = _series(train, "lr")
        if steps:
            lr_ax.plot(steps, values, "-", color=colour, label=f"{label}: lr")
        steps, values = _series(train, "contrast_weight")
        if steps:
            lambda_ax = lambda_ax or lr_ax.twinx()
            lambda_ax.plot(steps, values, "--", color=colour, label=f"{label}: lambda")
        steps, values = _series(valid, "miou")
        if steps:
            miou_ax.plot(steps, values, "o-", color=colour, label=label)
        steps, values = _series(train, "images_per_second")
        if steps:
            speed_ax.plot(steps, values, "-", color=colour, label=label)
    loss_ax.set(title="losses", xlabel="step", ylabel="loss")
    lr_ax.set(title="learning rate" + (" and lambda" if lambda_ax else ""), xlabel="step", ylabel="lr")
    if lambda_ax is not None:
        lambda_ax.set_ylabel("lambda (contrast weight)")
    miou_ax.set(title="validation mIoU", xlabel="step", ylabel="mIoU")
    speed_ax.set(title="throughput", xlabel="step", ylabel="images / s")
    for ax in (loss_ax, miou_ax, speed_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    handles, names = lr_ax.get_legend_handles_labels()
    if lambda_ax is not None:
        more = lambda_ax.get_legend_handles_labels()
        handles, names = handles + more[0], names + more[1]
    if handles:
        lr_ax.legend(handles, names, fontsize="small")
    lr_ax.grid(alpha=0.3)
    figure.suptitle(", ".join(_labels(dirs)))
    figure.tight_layout()
    with atomic_write(out_path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    return out_path
