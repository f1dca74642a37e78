"""The environment of every process of a Waldo job on Ray (the Train controller, its workers,
Tune trials): `training.running.distributed` gives it through the job's runtime env, and `waldo cluster
up` (`training.running.cluster`) starts its head with it, so jobs joining that head need no runtime env.
"""

# Settings for the processes of a Ray job (controller, workers, Tune trials), given through its
# runtime env and, for the Train controller, from the driver's environment too.
# - Ray Train gives a worker group 60 s to start; a worker importing torch and Lightning on a
#   busy small machine can take longer.
# - The Train controller collects a worker's report when it polls the workers, every 2 s by
#   default, and a worker's `ray.train.report` blocks until its previous report was collected
#   (a queue of one). With a checkpoint every epoch and epochs shorter than that (digits: about
#   0.3 s), the poll throttled training to one epoch per 2 s. Polling every 0.2 s costs the
#   controller 1.3% of a core instead of 0.7% (measured with one worker).
# - Ray starts its worker processes at niceness 15, so a training worker yields the CPU to any
#   other process on the node (the driver, the job's own data loading, the raylet, whatever
#   else runs there) and trains slower than the same code in-process at niceness 0. Ray's job
#   supervisor resets it to 0 for job drivers in the same way.
WORKER_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
              "RAY_worker_niceness": "0"}

__all__ = ["WORKER_ENV"]
