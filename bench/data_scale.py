"""Bench: synthetic-county generation and feature building at 1,000,000 applicants.

Budgets (issue: foundation): generation of 1,000,000 applicants x 36 months in <= 180 s with
<= 8 GiB peak memory; features for 1,000,000 applicants in <= 120 s. Each step runs in its own
process so that its peak RSS is its own. Usage: python bench/data_scale.py [--applicants N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

GENERATE = """
import json, time, sys
from govrisk.data.synthetic import generate, load_generator_config
t = time.perf_counter()
m = generate(load_generator_config("county"), n_applicants={n}, seed=7, out="{out}", progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "rows": {{k: v["rows"] for k, v in m["tables"].items()}}}}))
"""

FEATURES = """
import json, time
import numpy as np
from govrisk.data.store import read_dataset
from govrisk.data.features import FeatureBuilder
t0 = time.perf_counter()
d = read_dataset("{out}")
t1 = time.perf_counter()
sample = d.applicants.sample(n=min(100_000, len(d.applicants)), random_state=0)
b = FeatureBuilder.from_config("county").fit(sample, d.monthly)
t2 = time.perf_counter()
fs = b.transform(d.applicants, d.monthly)
t3 = time.perf_counter()
print(json.dumps({{"read": t1 - t0, "fit_100k": t2 - t1, "transform": t3 - t2,
                  "sequence": list(fs.sequence.shape), "static": list(fs.static.shape)}}))
"""


def run_step(code: str) -> tuple[dict, float]:
    """Run `code` in a fresh interpreter; returns its JSON line and its peak RSS in GiB."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak_gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--applicants", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        out = Path(tmp) / "county"
        gen, gen_peak = run_step(GENERATE.format(n=args.applicants, out=out))
        size_gib = sum(f.stat().st_size for f in out.iterdir()) / 2**30
        feat, feat_peak = run_step(FEATURES.format(out=out))
    # RUSAGE_CHILDREN reports the largest child so far: the feature step's own peak is the max.
    print(f"applicants                 {args.applicants:,}")
    print(f"rows                       {', '.join(f'{k} {v:,}' for k, v in gen['rows'].items())}")
    print(
        f"generate: time             {gen['seconds']:.1f} s   (budget 180 s)  {'OK' if gen['seconds'] <= 180 else 'OVER'}"
    )
    print(
        f"generate: peak RSS         {gen_peak:.2f} GiB (budget 8 GiB)  {'OK' if gen_peak <= 8 else 'OVER'}"
    )
    print(f"dataset size on disk       {size_gib:.2f} GiB")
    print(f"features: read parquet     {feat['read']:.1f} s")
    print(f"features: fit on 100k      {feat['fit_100k']:.1f} s")
    print(
        f"features: transform        {feat['transform']:.1f} s   (budget 120 s)  {'OK' if feat['transform'] <= 120 else 'OVER'}"
    )
    print(f"features: peak RSS         {max(feat_peak, gen_peak):.2f} GiB (max of both steps)")
    print(f"shapes                     sequence {feat['sequence']}, static {feat['static']}")


if __name__ == "__main__":
    main()
