"""infra/ sits below the entry points: it may use `pipelines` and `jepa`, never `ray_jobs` (which
mounts it) nor Ray itself, so `jepa stack` starts and stops the stack without loading either."""

import ast
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"
FORBIDDEN = {"ray_jobs", "ray"}


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_infra_imports_no_ray_jobs_and_no_ray():
    modules = sorted(INFRA.rglob("*.py"))
    assert modules, INFRA
    offenders = {str(p.relative_to(INFRA.parent)): sorted(_imported_packages(p) & FORBIDDEN) for p in modules}
    assert not {k: v for k, v in offenders.items() if v}
