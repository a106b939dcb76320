"""`python -m observability.mixin`: render the rules, alerts and dashboards.

With no options it regenerates the shipped files under observability/ (run it after editing
the mixin; tests/test_observability_mixin.py fails while they differ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from observability.mixin import Config, write

OBSERVABILITY = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    default = Config()
    parser = argparse.ArgumentParser(
        prog="python -m observability.mixin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=OBSERVABILITY, help="directory (default: observability/)")
    parser.add_argument(
        "--selector",
        default=default.selector,
        help="label matchers of the service's series, e.g. 'job=~\"delineate-.+\"' (default: none)",
    )
    parser.add_argument(
        "--group-by",
        default=",".join(default.group_by),
        help="comma-separated labels the rules keep and the dashboards filter on (default: %(default)s)",
    )
    parser.add_argument("--api-job", default=default.api_job)
    parser.add_argument("--worker-job", default=default.worker_job)
    args = parser.parse_args(argv)
    config = Config(
        selector=args.selector,
        group_by=tuple(label.strip() for label in args.group_by.split(",") if label.strip()),
        api_job=args.api_job,
        worker_job=args.worker_job,
    )
    for path in write(config, args.out):
        print(path)


if __name__ == "__main__":
    main()
