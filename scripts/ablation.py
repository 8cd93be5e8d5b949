"""The demo ablation: rows of settings x seeds on the embedded demo data, mean and spread per row.

Every run is ``prcl train -c configs/demo.yaml`` with the row's overrides and ``train.seed=S``;
rows differ from the demo only in ``method.name`` and the switch under study. Runs go in waves of
``--jobs`` processes; each finished run appends one JSON line (test and valid mIoU, the PRCL loss,
the variance-gap share and the gradient ratio at its logged steps) to ``<out>/runs.jsonl``, and
the table of rows (mean +- standard deviation over seeds) is written to ``<out>/ablation.md``.

``--tune CANDIDATE ...`` first runs each candidate fix (a set of overrides, e.g.
``"prcl.variance_scale=0.0039 prcl.prototype_variance=mean"``) on ``--tune-seeds`` and picks the
one with the best mean *valid* mIoU; the rows that name ``{fix}`` then use it.

    python scripts/ablation.py --out runs/ablation --seeds 0 1 2 --jobs 2
    python scripts/ablation.py --out runs/ablation --rows supervised mean_teacher --seeds 0 --set train.device=cuda

SIGINT (Ctrl-C) or SIGTERM stops it: the running trainings get the signal, save their step and exit (a second
signal stops them at once), and the same command continues: runs already in ``runs.jsonl`` are taken from
there, stopped ones resume from their ``last.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prcl.stopping import Stopped, stop_raises

ROWS = {
    "supervised": "method.name=supervised",
    "mean_teacher": "method.name=mean_teacher",
    "prcl_T100": "prcl.temperature=100",
    "prcl_demo_T": "",
    "prcl_fix": "{fix}",
    "prcl_deterministic": "{fix} prcl.deterministic=true",
    "prcl_gdp": "{fix} prcl.global_prototypes=true prcl.gdp_decay=0.01",
    "prcl_gdp_vn": "{fix} prcl.global_prototypes=true prcl.gdp_decay=0.01 prcl.virtual_negatives=4 prcl.vn_radius=1.0",
}
DEFAULT_FIX = "prcl.variance_scale=0.00390625 prcl.prototype_variance=mean"
STOP_SECONDS = 25.0
"""After a stop signal, how long the running trainings get to save their step before they are killed."""


def run_one(name: str, overrides: list[str], seed: int, work: Path, common: list[str]) -> subprocess.Popen:
    run_dir = work / "runs" / f"{name}_seed{seed}"
    command = [sys.executable, "-m", "prcl", "train", "-c", "configs/demo.yaml", "--resume", "auto", *common,
               *overrides, f"train.seed={seed}", f"train.out_dir={run_dir}", "train.progress=false"]
    log = open(work / "logs" / f"{name}_seed{seed}.log", "a")
    # A session of its own: a terminal's Ctrl-C reaches this script only, which passes it on once (a second
    # signal would make the training stop at once, without saving its step).
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.run = (name, seed, run_dir, " ".join(overrides), time.perf_counter())  # type: ignore[attr-defined]
    return process


def collect(process: subprocess.Popen) -> dict:
    name, seed, run_dir, overrides, started = process.run  # type: ignore[attr-defined]
    result = {"row": name, "seed": seed, "overrides": overrides, "seconds": round(time.perf_counter() - started, 1),
              "exit": process.returncode}
    summary = run_dir / "summary.json"
    if process.returncode == 0 and summary.is_file():
        s = json.loads(summary.read_text())
        result.update(test=100 * s["test_miou"], valid=100 * s["miou"])
        for split, key in (("valid", "uncertainty"), ("test", "test_uncertainty")):
            for name, value in s.get(key, {}).items():
                if name.startswith("auroc_") and value is not None:
                    result[f"{split}_{name}"] = value
        train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in train if r.get("type") == "train"]
        for key in ("prcl", "prcl_gap_share", "prcl_grad_ratio", "variance", "pseudo_label_auroc_variance",
                    "pseudo_label_auroc_confidence"):
            points = [(r["step"], r[key]) for r in train if key in r]
            if points:
                result[key] = points
    return result


def finished_runs(out: Path) -> dict[tuple[str, int, str], dict]:
    """The runs ``runs.jsonl`` holds as finished (exit 0, with a test mIoU), by (row, seed, overrides)."""
    path = out / "runs.jsonl"
    done = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if result.get("exit") == 0 and "test" in result:
            done[(result["row"], result["seed"], result["overrides"])] = result
    return done


def run_all(jobs: list[tuple[str, list[str], int]], out: Path, work: Path, common: list[str],
            parallel: int) -> list[dict]:
    """Run (row, overrides, seed) jobs, ``parallel`` at a time, appending results to runs.jsonl; jobs it already
    holds as finished are taken from there. A stop signal stops the running ones (``stop_runs``) and is raised."""
    done = finished_runs(out)
    results = [done[(n, s, " ".join(o))] for n, o, s in jobs if (n, s, " ".join(o)) in done]
    running: list[subprocess.Popen] = []
    queue = [(n, o, s) for n, o, s in jobs if (n, s, " ".join(o)) not in done]
    try:
        while queue or running:
            while queue and len(running) < parallel:
                name, overrides, seed = queue.pop(0)
                running.append(run_one(name, overrides, seed, work, common))
            time.sleep(1)
            for process in [p for p in running if p.poll() is not None]:
                running.remove(process)
                result = collect(process)
                results.append(result)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"{result['row']:<20} seed {result['seed']}: test {result.get('test', float('nan')):.1f} "
                      f"valid {result.get('valid', float('nan')):.1f} ({result['seconds']} s, exit {result['exit']})",
                      flush=True)
    except Stopped as stop:
        stop_runs(running, stop.signal_number)
        raise stop.with_detail(f"{len(running)} running trainings stopped") from None
    return results


def wait_all(processes: list[subprocess.Popen], seconds: float) -> None:
    """Wait until every process has ended, at most ``seconds`` in all."""
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def stop_runs(running: list[subprocess.Popen], signal_number: int) -> None:
    """Pass a stop signal on to the running trainings, which save their step and exit; wait for them (at most
    ``STOP_SECONDS``); a second signal meanwhile is passed on too (they stop at once). Kill what is left."""
    for process in running:
        process.send_signal(signal_number)
    try:
        wait_all(running, STOP_SECONDS)
    except Stopped as again:
        for process in running:
            if process.poll() is None:
                process.send_signal(again.signal_number)
        wait_all(running, 5.0)
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def spread(values: list[float], digits: int = 1) -> str:
    """Mean ± standard deviation over seeds ("-" for none, the value alone for one)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def at(points: list | None, which: int) -> str:
    return "-" if not points else f"{points[which][1]:.3g}"


def auroc(runs: list[dict], key: str) -> str:
    return spread([r[key] for r in runs if key in r], digits=2)


def table(results: list[dict], rows: list[str]) -> str:
    lines = ["| row | test mIoU | valid mIoU | seeds | PRCL loss first -> last | gap share first -> last "
             "| grad ratio first -> last | head variance first -> last | valid AUROC variance / entropy "
             "| test AUROC variance / entropy | pseudo-label AUROC variance first -> last |",
             "|---|---:|---:|---:|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = sorted((r for r in results if r["row"] == row and "test" in r), key=lambda r: r["seed"])
        if not runs:
            continue
        first = runs[0]
        lines.append(
            f"| {row} | {spread([r['test'] for r in runs])} | {spread([r['valid'] for r in runs])} | {len(runs)} "
            f"| {at(first.get('prcl'), 0)} -> {at(first.get('prcl'), -1)} "
            f"| {at(first.get('prcl_gap_share'), 0)} -> {at(first.get('prcl_gap_share'), -1)} "
            f"| {at(first.get('prcl_grad_ratio'), 0)} -> {at(first.get('prcl_grad_ratio'), -1)} "
            f"| {at(first.get('variance'), 0)} -> {at(first.get('variance'), -1)} "
            f"| {auroc(runs, 'valid_auroc_variance')} / {auroc(runs, 'valid_auroc_entropy')} "
            f"| {auroc(runs, 'test_auroc_variance')} / {auroc(runs, 'test_auroc_entropy')} "
            f"| {at(first.get('pseudo_label_auroc_variance'), 0)} -> {at(first.get('pseudo_label_auroc_variance'), -1)} |")
    return "\n".join(lines)


def main() -> None:
    try:
        with stop_raises():
            ablate()
    except Stopped as stop:
        again = shlex.join(["python", *sys.argv])
        print(f"ablation: {stop}; continue with: {again}", file=sys.stderr)
        sys.exit(stop.exit_code)


def ablate() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablation", help="runs.jsonl, tuning.json, ablation.md")
    parser.add_argument("--work", help="run directories and logs (default: --out)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows among {list(ROWS)} and --row names")
    parser.add_argument("--row", nargs="+", default=[], metavar="NAME=OVERRIDES",
                        help='extra rows, e.g. "head_lr_1e-3={fix} optim.uncer_lr=0.001"')
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--fix", default=DEFAULT_FIX, help="overrides of the fix, unless --tune picks one")
    parser.add_argument("--tune", nargs="*", default=[], help="candidate fixes, chosen on valid mIoU")
    parser.add_argument("--tune-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every run, e.g. train.device=cuda")
    args = parser.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out
    out.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    common = list(args.set)
    rows = dict(ROWS)
    for entry in args.row:
        name, _, overrides = entry.partition("=")
        rows[name] = overrides
    unknown = [row for row in args.rows if row not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown}: choose among {list(rows)} or add them with --row NAME=OVERRIDES")

    # One demo dataset for every run, written before the runs start (no two writers).
    from prcl.config import load_config
    from prcl.engine.data_setup import demo_root

    demo_root(load_config("configs/demo.yaml", common))

    fix = args.fix
    if args.tune:
        tuned = run_all([(f"tune{i}", shlex.split(c), s) for i, c in enumerate(args.tune) for s in args.tune_seeds],
                        out, work, common, args.jobs)
        scores = {i: statistics.mean([r["valid"] for r in tuned if r["row"] == f"tune{i}" and "valid" in r] or [-1])
                  for i in range(len(args.tune))}
        best = max(scores, key=scores.get)
        fix = args.tune[best]
        choice = {"candidates": args.tune, "valid_mean": scores, "chosen": fix}
        (out / "tuning.json").write_text(json.dumps(choice, indent=1))
        print(f"chosen on valid: {fix} ({scores})", flush=True)

    jobs = [(row, shlex.split(rows[row].format(fix=fix)), seed) for seed in args.seeds for row in args.rows]
    results = run_all(jobs, out, work, common, args.jobs)
    text = f"fix: `{fix}`\n\n" + table(results, args.rows) + "\n"
    (out / "ablation.md").write_text(text)
    print(text)
    os.sync()


if __name__ == "__main__":
    main()
