"""Cost of loading the definitions, in a new process and once warm, and of binding one call.

Compares, in one run, each against a baseline measured the same way:
  process   `load_registry()` in a new process (as every command, worker and task import
            pays it) whose checked-files folder already records the shipped files
  cold      the same in a new process with an empty folder: every embedded schema is
            checked against the meta-schema, as every process did before files that
            passed were remembered
  baseline  reading and `json.loads` of the same shipped definition files, in a new process
Target: process / baseline <= 100 (cold is reported, not targeted: once per content).
Times are taken inside the process, around the load only (not the interpreter's start).

  load      `load_registry()` in a process that has loaded it once (schema checks remembered)
  baseline  reading and `json.loads` of the same shipped definition files
Target: load / baseline <= 100.

  bind      `binding.prepare` + `binding.parse` of Slack's chat.postMessage (templates and
            validators compiled at load)
  baseline  building the same `httpx.Request` by hand and `response.json()` of the answer
Target: bind / baseline <= 10.

These replace the unit tests' former timed asserts (a warm load under 100 ms, prepare +
parse under 1 ms); the targets are loose, as those bounds were. The unit tests keep the
reasons these are cheap: a warm load checks no schema again, a file that passed is not
checked again, templates and validators are compiled once at load.

    .venv/bin/python bench/bench_definitions.py [--rounds N] [--per-round N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from prefect_integrations import binding
from prefect_integrations.definitions import load_registry, shipped_definitions_dir

LOAD_TARGET = 100.0
PROCESS_TARGET = 100.0

# Run in a new process; each prints the seconds its step took.
_LOAD_IN_PROCESS = """
import sys, time
from pathlib import Path
from prefect_integrations.definitions import load_registry
start = time.perf_counter()
registry = load_registry(checked_folder=Path(sys.argv[1]))
print(time.perf_counter() - start, sum(len(d.methods) for d in registry))
"""
_READ_IN_PROCESS = """
import json, time
from prefect_integrations.definitions import shipped_definitions_dir
start = time.perf_counter()
for path in sorted(shipped_definitions_dir().glob("*.json")):
    json.loads(path.read_text(encoding="utf-8"))
print(time.perf_counter() - start, 0)
"""
BIND_TARGET = 10.0

SLACK_POSTED = json.loads(
    (
        Path(__file__).parent.parent / "tests/fixtures/providers/slack_chat_post_message.json"
    ).read_text(encoding="utf-8")
)


def _time(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _compare(
    baseline: Callable[[], object], measured: Callable[[], object], *, rounds: int, per_round: int
) -> tuple[float, float]:
    for fn in (baseline, measured):
        _time(fn, max(1, per_round // 10))  # warm up
    base_runs, runs = [], []
    for _ in range(rounds):  # interleaved rounds: noise hits both sides alike
        base_runs.append(_time(baseline, per_round))
        runs.append(_time(measured, per_round))
    return statistics.median(base_runs), statistics.median(runs)


def _report(label: str, what: str, base: float, cost: float, target: float) -> None:
    ratio = cost / base
    print(f"baseline  {what:<38} {base * 1e6:10.1f} us/op")
    print(f"{label:<9} {'':<38} {cost * 1e6:10.1f} us/op")
    print(
        f"ratio     {label} / baseline{'':<24} {ratio:10.2f}x  (target <= {target}x)"
        f"  {'OK' if ratio <= target else 'OVER TARGET'}"
    )


def _in_process(code: str, *args: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def _new_processes(rounds: int) -> None:
    """Load in new processes: with the checked files recorded, with none, and the baseline."""
    cold_runs, runs, base_runs = [], [], []
    methods = 0
    with tempfile.TemporaryDirectory(prefix="pi-bench-") as scratch:
        recorded = Path(scratch) / "checked"
        _in_process(_LOAD_IN_PROCESS, str(recorded))  # records the shipped files
        for index in range(rounds):  # interleaved rounds: noise hits all sides alike
            base_runs.append(_in_process(_READ_IN_PROCESS)[0])
            empty = Path(scratch) / f"empty-{index}"
            cold_runs.append(_in_process(_LOAD_IN_PROCESS, str(empty))[0])
            seconds, methods = _in_process(_LOAD_IN_PROCESS, str(recorded))
            runs.append(seconds)
    base, cold, cost = (statistics.median(r) for r in (base_runs, cold_runs, runs))
    print(f"{rounds} new processes each, medians; {methods} methods")
    print(f"baseline  {'json.loads of the definition files':<38} {base * 1e3:10.1f} ms")
    print(f"cold      {'every file checked':<38} {cold * 1e3:10.1f} ms")
    print(f"process   {'files that passed not checked again':<38} {cost * 1e3:10.1f} ms")
    ratio = cost / base
    print(
        f"ratio     process / baseline{'':<21} {ratio:10.2f}x  (target <= {PROCESS_TARGET}x)"
        f"  {'OK' if ratio <= PROCESS_TARGET else 'OVER TARGET'}"
    )
    print(f"ratio     cold / process{'':<25} {cold / cost:10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--process-rounds", type=int, default=3)
    args = parser.parse_args()

    _new_processes(args.process_rounds)

    files = sorted(shipped_definitions_dir().glob("*.json"))

    def read_files() -> None:
        for path in files:
            json.loads(path.read_text(encoding="utf-8"))

    load_registry()  # the first load checks every schema; later ones remember
    base, cost = _compare(
        read_files, load_registry, rounds=args.rounds, per_round=max(1, args.per_round // 10)
    )
    print(f"{args.rounds} rounds, medians; {len(files)} definition files")
    _report("load", "json.loads of the definition files", base, cost, LOAD_TARGET)

    slack = load_registry().get("slack")
    method = slack.method("post_message")
    inputs = {"channel": "C1H9RESGL", "text": "Here's a message for you", "mrkdwn": False}
    response = httpx.Response(200, json=SLACK_POSTED)

    def by_hand() -> None:
        httpx.Request(
            "POST",
            "https://slack.com/api/chat.postMessage",
            json=inputs,
            headers={"accept": "application/json"},
        )
        response.json()

    def bind() -> None:
        _, ctx = binding.prepare(slack, method, inputs, {})
        binding.parse(slack, method, response, ctx)

    base, cost = _compare(by_hand, bind, rounds=args.rounds, per_round=args.per_round * 10)
    _report("bind", "httpx.Request by hand + response.json()", base, cost, BIND_TARGET)


if __name__ == "__main__":
    main()
