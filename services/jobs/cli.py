"""`waldo jobs ...`: a client of the jobs API. Submitted specs are the ones `waldo train`,
`waldo sweep`, `waldo export`, `waldo promote` and `waldo predict --model` take, built from the
same flags (`training.spec.flags`).

A refusal of the API (JobsApiError) is printed by `waldo` as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os

from training.spec import ExportSpec, PredictSpec, PromoteSpec, SweepSpec, TrainSpec
from training.spec.flags import Number, add_spec_flags, spec_from_args

KINDS = {"train": TrainSpec, "sweep": SweepSpec, "export": ExportSpec, "promote": PromoteSpec,
         "predict": PredictSpec}


def cmd_jobs(args: argparse.Namespace) -> int:
    from services.jobs.client import JobsClient

    client = JobsClient(args.url, args.token or os.environ.get("WALDO_JOBS_TOKEN"))
    if args.jobs_command == "submit":
        spec = spec_from_args(args, spec_cls=KINDS[args.kind])
        job = client.submit(args.kind, spec.model_dump(mode="json", exclude_unset=True))
        print(f"submitted {job['id']} ({job['kind']}): {job['status']}")
    elif args.jobs_command == "list":
        for job in client.list():
            print(f"{job['id']:28s} {job['kind']:7s} {job['status']:10s} {job['submitted_at'] or ''}"
                  f"  {job['mlflow_run_url'] or ''}")
    elif args.jobs_command == "status":
        print(json.dumps(client.get(args.job_id), indent=2))
    elif args.jobs_command == "logs":
        print(client.logs(args.job_id, args.tail), end="")
    elif args.jobs_command == "stop":
        answer = client.stop(args.job_id)
        state = "stopping" if answer["stopped"] else "not running"
        print(f"{answer['id']}: {state} ({answer['status']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `waldo jobs` to the `waldo` command."""
    p = sub.add_parser("jobs", help="submit and follow jobs through the jobs API",
                       description="A client of the jobs API (services/jobs). Submitted specs are "
                       "the ones `waldo train`, `waldo sweep`, `waldo export`, `waldo promote` and "
                       "`waldo predict --model` take (promote's NAME and VERSION as --name and "
                       "--version, predict's SOURCEs as --source, repeated).")
    p.add_argument("--url", default=os.environ.get("WALDO_JOBS_URL", "http://127.0.0.1:8001"),
                   help="the jobs API (default: WALDO_JOBS_URL or %(default)s)")
    p.add_argument("--token", help="bearer token (default: WALDO_JOBS_TOKEN)")
    p.set_defaults(func=cmd_jobs)
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    submit = jobs.add_parser("submit", help="submit a train, sweep, export, promote or predict job")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, spec_cls in KINDS.items():
        add_spec_flags(kinds.add_parser(kind, help=f"a {kind} job (flags as in `waldo {kind}`)"),
                       spec_cls=spec_cls)
    jobs.add_parser("list", help="every job, newest first")
    for action, text in [("status", "one job as JSON"), ("logs", "a job's output"), ("stop", "stop a job")]:
        q = jobs.add_parser(action, help=text)
        q.add_argument("job_id", metavar="JOB_ID")
        if action == "logs":
            q.add_argument("--tail", type=Number("an integer", low=1), help="only the last N lines")
