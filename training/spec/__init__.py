"""The spec: the one description of a job (`TrainSpec`, `SweepSpec`, `ExportSpec`, `PromoteSpec`,
`PredictSpec`).

The CLI flags, a YAML file, the jobs API body and Ray Tune's overrides all build these, and
each is validated once, here. Torch-free, so light processes (the jobs API) validate specs.

- `specs`: `TrainSpec`, `DataSpec`, `build_spec`; `search`: `SweepSpec` and its search;
  `export`: `ExportSpec`; `promote`: `PromoteSpec`; `predict`: `PredictSpec` (a scoring run);
  `jobs`: the job contract (entrypoint, environment).
- `fields`: field types that carry their checks, bounds, and the rules each field declares
  (`Rules`, read with `rules_of` and `fields_with`).
- `recipe`: the data options and the training recipe's fields, and their defaults per task
  and data.
- `catalog`: the torch-free names of networks and data sets, and the builders' arguments.
- `files`: YAML spec files.  `flags`: one command-line flag per field.

Checkpoints and pickles written before the package existed name `training.spec.TrainSpec`;
the names below keep them loading.
"""

from training.spec.export import DEFAULT_ATOL, DEFAULT_MAX_DROP, EXPORT_PRECISIONS, ExportSpec
from training.spec.fields import DEFAULT_OPSET, Rules, check_run_name, fields_with, number_kind, rules_of
from training.spec.files import load_yaml
from training.spec.jobs import JOB_ENTRYPOINT, JOB_ENV, JOB_RESULT_PREFIX, JOB_SPECS
from training.spec.predict import PredictSpec
from training.spec.promote import PromoteSpec
from training.spec.search import SweepSpec, parse_distribution
from training.spec.specs import WORKER_RANGE, DataSpec, TrainSpec, build_spec, format_validation_error

__all__ = ["DEFAULT_ATOL", "DEFAULT_MAX_DROP", "DEFAULT_OPSET", "EXPORT_PRECISIONS", "JOB_ENTRYPOINT",
           "JOB_ENV", "JOB_RESULT_PREFIX", "JOB_SPECS", "WORKER_RANGE", "DataSpec", "ExportSpec",
           "PredictSpec", "PromoteSpec", "Rules", "SweepSpec", "TrainSpec", "build_spec", "check_run_name",
           "fields_with", "format_validation_error", "load_yaml", "number_kind", "parse_distribution",
           "rules_of"]
