"""Start-up time of the OAuth server the tests run (tests/oauth_server, oidc-provider).

Compares, in one run:
  baseline  starting and ending a bare `node -e ""` process
  server    `start_oauth_server` until it answers discovery (its `startup_seconds`)
Target: server / baseline <= 35 (about what the 5 s bound the tests used to assert allowed).

    .venv/bin/python bench/bench_oauth_server.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.oauth import start_oauth_server

TARGET = 35.0


def _bare_node(node: str) -> float:
    started = time.monotonic()
    subprocess.run([node, "-e", ""], check=True)
    return time.monotonic() - started


def _server(scratch: Path) -> float:
    with start_oauth_server(
        redirect_uris=["http://127.0.0.1:8765/callback"], tmp_path=scratch
    ) as server:
        return server.startup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    with tempfile.TemporaryDirectory(prefix="pi-bench-") as scratch:
        _bare_node(node)  # warm up the file cache
        _server(Path(scratch))
        base_runs, runs = [], []
        for _ in range(args.rounds):  # interleaved rounds: noise hits both sides alike
            base_runs.append(_bare_node(node))
            runs.append(_server(Path(scratch)))
    base = statistics.median(base_runs)
    cost = statistics.median(runs)
    ratio = cost / base
    print(f"{args.rounds} rounds, medians")
    print(f"baseline  bare node process          {base * 1e3:8.1f} ms")
    print(f"server    oidc-provider until ready  {cost * 1e3:8.1f} ms")
    print(
        f"ratio     server / baseline          {ratio:8.2f}x  (target <= {TARGET}x)"
        f"  {'OK' if ratio <= TARGET else 'OVER TARGET'}"
    )


if __name__ == "__main__":
    main()
