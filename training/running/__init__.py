"""Running a spec: the pipeline (`pipeline.run`) picks the in-process runner (`local`) or the
Ray Train one (`distributed`), or runs a Ray Tune sweep (`sweep`); both runners build their
Trainer from the shared steps (`steps`, `callbacks`, `finetune`, `init_from`). `jobrunner` is
the entry point of a job the jobs API submits, `cluster` the persistent local Ray head,
`rayinit` how a job joins Ray (or starts a local one), and `workerenv` what a Ray worker process
sets before torch loads."""
