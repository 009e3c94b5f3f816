"""The layering the README draws, checked on the code's own imports: include/ is plain Python (no
Airflow, no Airflow extension), plugins/ extends Airflow on top of it, dags/ wire both, and nothing
of the product imports the development stack (devstack/), which the product's image does not hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top_levels(folder: str) -> dict[Path, set[str]]:
    return {path: {name.split(".")[0] for name in imported_modules(path)} for path in (REPO / folder).rglob("*.py")}


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("include", {"airflow", "rewind_airflow", "devstack"}),
        ("plugins", {"devstack"}),
        ("dags", {"devstack"}),
    ],
)
def test_each_layer_imports_only_what_lies_below_it(folder, forbidden):
    offending = {str(path.relative_to(REPO)): sorted(names & forbidden) for path, names in top_levels(folder).items() if names & forbidden}
    assert offending == {}


def test_the_check_sees_an_import_when_there_is_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom airflow.sdk import DAG\ndef f():\n    import devstack.demo\n")
    assert {name.split(".")[0] for name in imported_modules(sample)} == {"os", "airflow", "devstack"}


def test_the_product_distribution_does_not_package_the_development_stack():
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["where"] == ["include", "plugins"]
    assert set(setuptools["package-dir"]) == {"rewind", "rewind_airflow"}
    assert "devstack" not in (REPO / "docker" / "Dockerfile").read_text()
