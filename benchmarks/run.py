"""Run a benchmark suite and write ``benchmarks/results/<suite>.json`` and ``.md``.

python -m benchmarks.run mnist_usps --seeds 0 1 2
python -m benchmarks.run overhead
make bench SUITE=mnist_usps          # or SUITE=all

Suites that train reuse a finished run (and continue an interrupted one) only when it was made at the
current commit with a clean source tree and from the same config (benchmarks/runs.py); otherwise they train
it again in a new directory. --reuse-runs accepts every existing run as it is.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import time

from benchmarks import suites
from benchmarks.records import suite_revision, write_results
from crosstask.errors import CrosstaskError


def suite_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(suites.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", help=f"one of {', '.join(suite_names())}, or all")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the suite's)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (results marked as quick)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these methods (suites that compare methods; e.g. to split a suite across processes)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="shorten every training run to this many steps (suites that train)",
    )
    parser.add_argument(
        "--reuse-runs",
        action="store_true",
        help="reuse finished runs (and continue interrupted ones) even when they were made at another code "
        "revision, with uncommitted changes, or from another config; records still say what they came from",
    )
    args = parser.parse_args(argv)
    names = suite_names() if args.suite == "all" else [args.suite]
    unknown = [n for n in names if n not in suite_names()]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; suites: {', '.join(suite_names())}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("crosstask").setLevel(logging.WARNING)
    suite_revision()  # the code revision as the suites start (records of suites that train no runs carry it)
    for name in names:
        module = importlib.import_module(f"benchmarks.suites.{name}")
        options = {
            "seeds": args.seeds or module.SEEDS,
            "quick": args.quick,
            "methods": args.methods,
            "steps": args.steps,
            "reuse_runs": args.reuse_runs,
        }
        started = time.perf_counter()
        try:
            records = module.run(options)
        except CrosstaskError as exc:  # one message, no traceback; an interrupted run stops every suite
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        options["minutes"] = round((time.perf_counter() - started) / 60, 1)
        # a quick or shortened run never overwrites the real results
        suffix = ".quick" if args.quick else (f"_{args.steps}steps" if args.steps else "")
        # a run of some methods (--methods) keeps the other methods' results in the file
        json_path, md_path = write_results(name + suffix, records, options, args.methods is not None)
        print(md_path.read_text())
        print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
