"""Serve the pipeline flow as a Prefect deployment (optionally on a cron schedule) from this process.

Needs a Prefect server the runner can reach (``prefect server start``, then ``PREFECT_API_URL``); the process
stays up and executes scheduled or UI-triggered runs of :func:`pipeline.ganops_pipeline` in this checkout.

    python flows/serve.py --cron "0 3 * * *"
"""

from __future__ import annotations

import argparse

from pipeline import ganops_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="ganops-pipeline", help="deployment name")
    parser.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * *' (default: manual runs only)")
    args = parser.parse_args()
    ganops_pipeline.serve(name=args.name, cron=args.cron, tags=["ganops"])


if __name__ == "__main__":
    main()
