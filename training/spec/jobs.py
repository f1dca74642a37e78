"""The contract between the jobs API and the Ray job it submits: the spec class of each kind of
job, the fixed entrypoint, and how the job and its result travel. Torch-free."""

from __future__ import annotations

from pydantic import BaseModel

from training.spec.export import ExportSpec
from training.spec.predict import PredictSpec
from training.spec.promote import PromoteSpec
from training.spec.search import SweepSpec
from training.spec.specs import TrainSpec

JOB_SPECS: dict[str, type[BaseModel]] = {"train": TrainSpec, "sweep": SweepSpec, "export": ExportSpec,
                                          "promote": PromoteSpec, "predict": PredictSpec}
JOB_ENTRYPOINT = "python -m training.jobrunner"  # fixed; the job itself travels as data:
JOB_ENV = "WALDO_JOB"  # {"kind": ..., "spec": {...}} as JSON in this environment variable
JOB_RESULT_PREFIX = "WALDO_RESULT "  # the runner's last line: this prefix, then JSON
