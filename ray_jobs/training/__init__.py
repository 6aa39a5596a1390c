"""What every Ray Train job shares, so a job adds only its worker loop and its config.

- `run_folder`: where a run keeps its checkpoints, which MLflow run it logs to, and the data
  position its latest checkpoint recorded (the resume point).
- `driver`: `TrainingJob` and `run_job`: start or resume the MLflow run, build the dataset at
  the resume point, fit, and restart failed attempts from their latest checkpoint.
- `worker`: `WorkerSession`, one rank's side: resume, batches, metric logging, checkpoints,
  and at the end the ranks' weight fingerprints and the registration.
- `metrics`: rank 0's MLflow logger, which never logs a step twice.
- `registration`: fingerprints of the ranks' weights and registering a model in MLflow.
"""
