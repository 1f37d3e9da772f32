"""The layers and which may import which, read from every module's imports with ``ast`` (nothing
is imported to check them), plus what importing the gateway and the worker really loads.

    cli          -> everything (the ``midiffusion`` command wires the parts together)
    service      -> jobs, model_store            (the gateway: no torch, no science, no worker)
    worker       -> jobs, science, model_store
    science      -> model_store.card, model_store.files only (``midiffusion`` minus its cli)
    jobs         -> nothing of ours
    model_store  -> nothing of ours
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("midiffusion", "model_store", "jobs", "service", "worker")
ALLOWED = {
    "cli": {"cli", "science", "model_store", "jobs", "service", "worker"},
    "service": {"service", "jobs", "model_store"},
    "worker": {"worker", "jobs", "science", "model_store"},
    "science": {"science", "model_store"},
    "jobs": {"jobs"},
    "model_store": {"model_store"},
}
# what of model_store the science may use: the typed card, and the shared file primitives
SCIENCE_FROM_MODEL_STORE = ("model_store.card", "model_store.files")


def layer(module: str) -> str | None:
    if module == "midiffusion.cli" or module.startswith("midiffusion.cli."):
        return "cli"
    top = module.split(".")[0]
    if top == "midiffusion":
        return "science"
    return top if top in PACKAGES else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top, inside functions or under TYPE_CHECKING."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import mod` imports the module pkg.mod where there is one
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(base, alias))
    return found


def _is_module(base: str, alias: ast.alias) -> bool:
    target = REPO.joinpath(*base.split("."), alias.name)
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def our_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


MODULES = our_modules()


def test_the_scan_sees_every_kind_of_import() -> None:
    serve = imports_of(REPO / "midiffusion/cli/serve.py")  # imported inside run()
    assert {"service.app", "worker.app", "worker.settings"} <= serve
    intensity = imports_of(REPO / "midiffusion/pipeline/intensity.py")  # under TYPE_CHECKING
    assert "model_store.card" in intensity
    assert "midiffusion.training.augment" in imports_of(REPO / "midiffusion/training/trainer.py")
    assert len(MODULES) > 80


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path: Path) -> None:
    here = layer(module_name(path))
    assert here is not None
    bad = []
    for imported in sorted(imports_of(path)):
        there = layer(imported)
        if there is None:
            continue  # the standard library or a third-party package
        science_reaches_the_registry = (
            here == "science"
            and there == "model_store"
            and not imported.startswith(SCIENCE_FROM_MODEL_STORE)
        )
        if there not in ALLOWED[here] or science_reaches_the_registry:
            bad.append(imported)
    assert not bad, f"{module_name(path)} ({here}) may not import {bad}"


def _loaded(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return set(out.stdout.split())


def test_the_gateway_loads_neither_torch_nor_the_science_nor_the_worker() -> None:
    loaded = _loaded("import service.app, service.cleanup")
    tops = {m.split(".")[0] for m in loaded}
    assert "service.app" in loaded
    assert not tops & {"torch", "midiffusion", "worker"}, tops & {"torch", "midiffusion", "worker"}


def test_importing_the_worker_builds_nothing_and_loads_no_torch() -> None:
    loaded = _loaded(
        "import worker, worker.app\n"
        "assert worker.app._app is None, 'importing worker.app built a Celery app'"
    )
    assert "worker.tasks" not in loaded and "torch" not in loaded
    loaded = _loaded("import worker.app\nassert worker.app.app.tasks['midiffusion.translate']")
    assert "torch" not in loaded  # registering the task is torch-free too


def test_the_package_and_its_command_line_import_light() -> None:
    loaded = _loaded("import midiffusion, midiffusion.cli.main, model_store, jobs")
    assert "torch" not in loaded


def test_every_package_is_installed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{pkg}*" for pkg in PACKAGES} <= set(include)
    assert config["project"]["scripts"]["midiffusion"] == "midiffusion.cli.main:main"
