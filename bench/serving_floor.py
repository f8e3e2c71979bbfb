"""The latency floor of the serving stack: BentoML answering /score without scoring anything.

    python bench/serving_floor.py [--workers 2] [--rate 200] [--seconds 30]

Starts `bentoml serve bench.serving_floor:Floor` (the scoring service's BentoML settings: workers,
no access log, no tracing on /score; an async API whose input model BentoML parses from the same
request bodies, and which answers a fixed JSON without any work) and runs bench/serving.py's open loop against it with the same request bodies. What it
prints is what uvicorn, BentoML and the load client cost before any parsing, feature, model or
decision-log work: the part of the `/score` latency bounds that scoring code cannot remove.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.responses import Response

ROOT = Path(__file__).resolve().parent.parent
WORKERS = int(os.environ.get("FLOOR_WORKERS", "2"))  # read by `bentoml serve` when it imports this file
ANSWER = json.dumps({"request_id": "floor"}).encode()


@bentoml.service(
    name="govrisk-floor",
    workers=WORKERS,
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/score"]},
)
class Floor:
    @bentoml.api(route="/score")
    async def score(
        self,
        applicant: dict[str, Any] | None = None,
        tax_monthly: list[dict[str, Any]] | None = None,
        social_security_monthly: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return Response(ANSWER, media_type="application/json")  # type: ignore[return-value]


def main() -> None:
    import importlib.util

    sys.path.insert(0, str(ROOT))
    # bench/serving.py's open loop: the same client and schedule as the real figure (loaded by path,
    # as `serving` is also the package name)
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    assert spec is not None and spec.loader is not None
    bench_serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_serving)
    open_loop = bench_serving.open_loop

    from devtools.client import request_bodies
    from devtools.launcher import Server
    from govrisk.core.config import work_dir
    from govrisk.data.store import read_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    dataset = work_dir() / "data" / "bench-serving-3000-s3"
    if not (dataset / "manifest.json").exists():
        sys.exit(f"no request data at {dataset}: run `python bench/serving.py` once first")
    bodies = [json.dumps(b).encode() for b in request_bodies(read_dataset(dataset))]
    server = Server(work_dir() / "serving" / "floor", {}, service="bench.serving_floor:Floor")
    server.env["FLOOR_WORKERS"] = str(args.workers)
    server.start()
    try:
        open_loop(server.url, bodies, 50, 3)  # warm-up
        lat, errors, _ = open_loop(server.url, bodies, args.rate, args.seconds)
        print(
            f"floor: no-op /score, {args.workers} workers, open loop {args.rate:.0f} req/s x {args.seconds:.0f} s: "
            f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, {errors} errors"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
