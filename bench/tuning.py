"""Bench: 30 temporal-CNN trials on a 50,000-applicant county within 15 minutes, with pruning.

Runs `govrisk tune --model cnn` (configs/search/cnn.yaml: TPE, median pruner from the first epoch, 3 epochs at most) as
`--workers` processes of one torch thread each on one fresh SQLite study in the work folder — on two
cores, two single-threaded workers train about 1.4x faster than one worker with two threads. Prints
the wall time, trials complete / pruned, the best trial's validation AUC against the default config's
(trial 0, same budget) and the gain, then a PASS / FAIL line per bar. The county is generated before
the clock starts; reading it and building features is inside the clock (each worker does it once).

Usage: python bench/tuning.py [--trials 30] [--applicants 50000] [--budget 900] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from govrisk.core.config import work_dir
from govrisk.research.tune import StudySpec, load_search_space, study_report
from govrisk.training.config import load_experiment
from govrisk.training.train import dataset_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--applicants", type=int, default=50_000)
    ap.add_argument("--budget", type=float, default=900.0, help="seconds for the whole study")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    overrides = [f"data.generate.applicants={args.applicants}"]
    t = time.perf_counter()
    cfg, _ = load_experiment("county_cnn", overrides)
    data = dataset_path(cfg.data)  # generated once, outside the clock
    print(f"county      {data} ({time.perf_counter() - t:.0f} s to make or find)", flush=True)

    study = f"bench-cnn-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    spec = StudySpec.create(load_search_space("cnn"), overrides=overrides, study=study)
    # The workers' time budget: no trial starts that their median full trial says would overrun it.
    cmd = [sys.executable, "-m", "govrisk.cli", "tune", "--model", "cnn", "--trials", str(args.trials),
           "--study", study, "--threads", "1", "--timeout", str(int(args.budget - 60)), *overrides]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "GOVRISK_WORK": str(work_dir())}
    print(f"study       {study}: {args.trials} trials, {args.workers} workers x 1 thread", flush=True)
    t0 = time.perf_counter()
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if i else None, stderr=subprocess.DEVNULL
                                if i else None, text=True) for i in range(args.workers)]  # fmt: skip
    for w in workers:
        w.wait()
    wall = time.perf_counter() - t0
    failed = [w.returncode for w in workers if w.returncode]

    r = study_report(spec)
    trials = r["trials"]
    best, default = r["best"], r.get("default")
    if best is None or default is None:
        print(f"FAIL  no complete trial, or the default trial did not complete (workers exited {failed})")
        return 1
    print()
    print(f"wall time   {wall:.0f} s for {trials['finished']} finished trials ({trials['complete']} complete, "
          f"{trials['pruned']} pruned, {trials['fail']} failed, of which {trials['skipped']} skipped untrained)")  # fmt: skip
    print(f"pruned      {r['pruned_share']:.0%} of finished trials")
    print(
        f"best        trial {best['number']}: val AUC {best['value']:.4f}  OOT AUC {best['metrics'].get('oot/auroc', float('nan')):.4f}"
    )
    print(
        f"default     trial {default['number']}: val AUC {default['value']:.4f}  OOT AUC {default['metrics'].get('oot/auroc', float('nan')):.4f}"
    )
    print(f"gain        {r['gain_over_default']:+.4f} validation AUC over the default config")
    print(f"best config {r['best_config']}")
    print(f"dashboard   optuna-dashboard {r['storage']}")
    bars = [
        (f"{args.trials} trials finished", trials["finished"] >= args.trials),
        (f"within {args.budget:.0f} s (took {wall:.0f} s)", wall <= args.budget),
        (f"tuned CNN beats the default config on validation AUC ({r['gain_over_default']:+.4f})",
         r["gain_over_default"] > 0),
        ("no worker failed", not failed),
    ]  # fmt: skip
    for name, ok in bars:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
