"""The import direction of the layers (ARCHITECTURE: jepa -> pipelines -> ray_jobs, infra beside):

- `jepa/` is pure PyTorch: none of our other packages, and no Ray, MLflow, boto3 or pyarrow;
- `pipelines/` imports only `jepa/` of ours;
- `infra/` never imports `ray_jobs/` (which mounts it) nor Ray, so `jepa stack` loads neither.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"jepa", "pipelines", "ray_jobs", "infra"}
FORBIDDEN = {
    "jepa": (OURS - {"jepa"}) | {"ray", "mlflow", "boto3", "botocore", "pyarrow"},
    "pipelines": {"ray_jobs", "infra"},
    "infra": {"ray_jobs", "ray"},
}


def imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports_point_down_only(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    offenders = {str(f.relative_to(ROOT)): sorted(bad) for f in files
                 if (bad := imported_roots(f.read_text()) & FORBIDDEN[package])}
    assert not offenders, f"{package}/ must not import these: {offenders}"


def test_checker_sees_every_import_form():
    source = "import ray.train\nfrom mlflow import log_metric\nfrom ray_jobs.cli import main\nfrom . import sibling\n"
    assert imported_roots(source) == {"ray", "mlflow", "ray_jobs"}  # relative imports stay in the package
