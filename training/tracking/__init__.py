"""Where runs are recorded: MLflow's run lifecycle (`runs`), checkpoint storage in a folder or a
bucket (`storage`), and the pictures a run logs (`viz`)."""
