import ast
from pathlib import Path

FORBIDDEN = {"ray", "mlflow", "boto3", "botocore", "pyarrow"}
JEPA_DIR = Path(__file__).resolve().parents[2] / "jepa"


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_jepa_package_never_imports_infrastructure():
    files = sorted(JEPA_DIR.rglob("*.py"))
    assert files, JEPA_DIR
    offenders = {
        str(f.relative_to(JEPA_DIR)): sorted(bad)
        for f in files
        if (bad := _imported_roots(ast.parse(f.read_text(), filename=str(f))) & FORBIDDEN)
    }
    assert not offenders, f"jepa/ must stay pure PyTorch: {offenders}"


def test_checker_catches_an_import():
    assert _imported_roots(ast.parse("import ray.train\nfrom mlflow import log_metric")) == {"ray", "mlflow"}
