"""A small simulated decision system: applicants from a freshly generated county, sent to /score.

    python -m devtools.decision_system --start-server   # starts `bentoml serve`, scores, stops it
    python -m devtools.decision_system --url http://127.0.0.1:3000 --api-key KEY
    python -m devtools.decision_system --start-server --batch 5000 --batch-data runs/data/live-county

Step 9 of `make demo`; with --batch it also sends a whole county through /score_batch, the live
population that `govrisk monitor live` later judges (step 10).

A started server gets the API key `--api-key` and the applicant pseudonym key of the environment
(`GOVRISK_APPLICANT_KEY(_FILE)`; scripts/demo.sh exports the demo's generated key file), else the
launcher's demo key file `<work>/secrets/applicant.key` (devtools/launcher.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

from devtools.client import request_bodies
from devtools.launcher import API_KEY, Server
from govrisk.core.config import config_path, work_dir
from govrisk.data.store import read_dataset
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.serving.config import load_serving_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running endpoint; default: start one (--start-server)")
    ap.add_argument(
        "--start-server", action="store_true", help="start `bentoml serve` for the run, then stop it"
    )
    ap.add_argument("--config", default=str(config_path("serving", "default")), help="serving config")
    ap.add_argument("--api-key", default=os.environ.get("GOVRISK_DEMO_KEY", API_KEY))
    ap.add_argument("--applicants", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--batch", type=int, default=0, help="then send this many applicants through /score_batch"
    )
    ap.add_argument("--batch-data", type=Path, default=None, help="their county (generated if missing)")
    ap.add_argument("--batch-size", type=int, default=200, help="applicants per /score_batch request")
    ap.add_argument("--batch-seed", type=int, default=12)
    args = ap.parse_args(argv)

    data = work_dir() / "data" / f"decision-system-s{args.seed}"
    if not (data / "manifest.json").exists():
        generate(load_generator_config("county"), n_applicants=500, seed=args.seed, out=data, progress=False)
    bodies = request_bodies(read_dataset(data))[: args.applicants]

    server = None
    url = args.url
    if url is None or args.start_server:
        import yaml

        cfg = yaml.safe_load(Path(args.config).read_text())
        folder = work_dir() / "serving" / "demo"
        server = Server(folder, cfg, api_keys=args.api_key, port=int(cfg.get("port", 3000)))
        print(
            f"starting bentoml serve govrisk.serving.service:Scoring on {server.url} (log {server.log_path})"
        )
        server.start()
        url = server.url
    try:
        print(f"{'applicant':<12} {'entity':<17} {'requested':>11}  {'decision':<8} {'PD':>7} grade "
              f"{'rate':>6} {'limit':>11}  challenger      reasons")  # fmt: skip
        for body in bodies:
            r = httpx.post(f"{url}/score", json=body, headers={"X-API-Key": args.api_key}, timeout=30)
            if r.status_code != 200:
                print(f"{body['applicant']['applicant_id']}: HTTP {r.status_code} {r.text}")
                continue
            d = r.json()
            a = body["applicant"]
            rate = f"{d['rate']:.2%}" if d["rate"] is not None else "-"
            limit = f"{d['credit_limit']:,.0f}" if d["credit_limit"] is not None else "-"
            ch = d["challenger"]
            ch_text = f"{ch['pd']:.4f}/{ch['grade']}" if ch["pd"] is not None else ch["status"]
            print(
                f"{a['applicant_id']:<12} {a['entity_type']:<17} {a['requested_amount']:>11,.0f}  "
                f"{d['decision']:<8} {d['pd']:>7.4f} {d['grade']:>5} {rate:>6} {limit:>11}  "
                f"{ch_text:<15} {', '.join(d['reason_codes'][:2])}"
            )
        if args.batch:
            send_batches(url, args)
        dl = load_serving_config(args.config).decision_log
        print(f"models: champion {d['champion']['model']}, challenger {d['challenger']['model']}")
        print(
            f"decision log: {dl.resolved_url()} (table {dl.table}); export: govrisk decisions export --out FILE"
        )
    finally:
        if server is not None:
            server.stop()
            print("server stopped")
    return 0


def send_batches(url: str, args: argparse.Namespace) -> None:
    """A county's applicants through /score_batch, `--batch-size` at a time; prints the decisions' tally."""
    import collections
    import time

    data = args.batch_data or work_dir() / "data" / f"live-county-{args.batch}-s{args.batch_seed}"
    if not (data / "manifest.json").exists():
        generate(load_generator_config("county"), n_applicants=args.batch, seed=args.batch_seed, out=data,
                 progress=False)  # fmt: skip
    bodies = request_bodies(read_dataset(data))[: args.batch]
    tally: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    for start in range(0, len(bodies), args.batch_size):
        chunk = bodies[start : start + args.batch_size]
        r = httpx.post(f"{url}/score_batch", json={"applicants": chunk}, headers={"X-API-Key": args.api_key},
                       timeout=120)  # fmt: skip
        if r.status_code != 200:
            raise SystemExit(f"/score_batch: HTTP {r.status_code} {r.text[:500]}")
        for d in r.json()["decisions"]:
            tally[d["decision"]] += 1
            tally[f"challenger {d['challenger']['status']}"] += 1
    print(f"batch: {len(bodies):,} applicants of {data} through /score_batch in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(tally.items())))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
