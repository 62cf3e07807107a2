"""Run the benchmark suite, or part of it.

    python -m bench                      # every benchmark, every standard scenario
    python -m bench ingest               # one benchmark (all its scenarios)
    python -m bench ingest-pg-500k       # one scenario
    python -m bench --list
    python -m bench --tiny --no-docs     # the whole suite at toy size (what the tests run)

Each benchmark is a module in bench/ with
  SCENARIOS: dict[str, Params]           standard scenarios, each documented in docs/BENCHMARKS.md
  TINY: dict                             Params overrides for a seconds-long smoke run
  run_scenario(name, params, *, docs, results_dir) -> dict   (writes bench/results/NAME-*.json)
and one line in BENCHMARKS below. Results go to bench/results/ (JSON) and, for standard
scenarios at full size, to the scenario's marked section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from bench.common import unmet_targets

# name -> module; quota look-ups, reconciliation and reports slot in here.
BENCHMARKS = {
    "ingest": "bench.ingest",
    "quota": "bench.quota",
    "reconcile": "bench.reconcile",
    "events": "bench.events",
    "redemptions": "bench.redemptions",
    "simulate": "bench.simulate",
}


def load(name: str) -> ModuleType:
    return importlib.import_module(BENCHMARKS[name])


def resolve(names: list[str]) -> list[tuple[ModuleType, str]]:
    """(module, scenario) pairs for benchmark or scenario names, in suite order."""
    chosen: list[tuple[ModuleType, str]] = []
    for name in names or list(BENCHMARKS):
        if name in BENCHMARKS:
            module = load(name)
            chosen += [(module, s) for s in module.SCENARIOS]
            continue
        for bench in BENCHMARKS:
            module = load(bench)
            if name in module.SCENARIOS:
                chosen.append((module, name))
                break
        else:
            raise SystemExit(f"unknown benchmark or scenario {name!r}; try --list")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="benchmarks or scenarios (default: all)")
    ap.add_argument("--list", action="store_true", help="list benchmarks and scenarios")
    ap.add_argument("--runs", type=int, help="runs per scenario (median reported)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks the machinery only")
    ap.add_argument("--no-docs", action="store_true", help="leave docs/BENCHMARKS.md alone")
    ap.add_argument("--results-dir", type=Path)
    args = ap.parse_args(argv)
    if args.list:
        for bench in BENCHMARKS:
            module = load(bench)
            print(f"{bench}: {(module.__doc__ or '').strip().splitlines()[0]}")
            for name, params in module.SCENARIOS.items():
                print(f"  {name}: {params}")
        return 0
    unmet = []
    for module, name in resolve(args.names):
        params = module.SCENARIOS[name]
        if args.tiny:
            params = replace(params, **module.TINY)
        if args.runs:
            params = replace(params, runs=args.runs)
        result = module.run_scenario(name + ("-tiny" if args.tiny else ""), params,
                                     docs=not (args.tiny or args.no_docs),
                                     results_dir=args.results_dir)
        unmet += unmet_targets(name, result)
    for line in unmet:
        print(f"target not met: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
