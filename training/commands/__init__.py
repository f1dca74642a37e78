"""The `waldo` subcommands training owns (train, sweep, compare, export, summary, predict, data,
cluster, models), and the work behind the small ones (`summary`, `predict`, `compare`)."""
