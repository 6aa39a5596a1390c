"""What runs the project's services rather than its models: the local stack mounted by
`jepa stack` (SeaweedFS S3, an MLflow server and a Ray head as detached processes, run through
`infra.processes`; settings in `infra.config`, the services in `infra.services`, the `Stack` in
`infra.stack`, its command line in `infra.cli`) and the cluster manifests (`infra/kuberay/`). It
imports no Ray and nothing from `ray_jobs`, so bringing the stack up or down never pays for the
training code."""
