"""Lean installs (issue 21): each service image installs the pyproject extras ``service`` and its own (the root
Dockerfile installs ``.[service,<SERVICE>]``, the extra named after the service's directory with "-" for "_"), and
the service must import nothing outside them.

Two checks, one static and one real:

- the import graph (grimp, the graph import-linter builds), every import of the service's package and of what it
  reaches, function-level imports included: each third-party package it names must be installed by the image's
  requirement set, resolved through the installed distributions' metadata (``Requires-Dist``, extras followed);
- a fresh interpreter that refuses every third-party import outside that set, which then imports the service's
  bootstrap and builds its app: a package the graph missed (a plugin, a dynamic import) fails there.

torch (and torchvision) must be reachable from triage (it scores with training.model) and from nothing else, and
moto / Flask (the ``local`` extra) from no service at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

from shared.topology import SERVICES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = frozenset({"services", "shared", "training", "radloop", "infra", "bench"})
#: Third-party top-level modules no service may import, and the services allowed to.
HEAVY = {"torch": {"triage"}, "torchvision": {"triage"}, "moto": set(), "flask": set(), "werkzeug": set(),
         "sklearn": set(), "matplotlib": set(), "sagemaker": set(), "multipart": set(), "python_multipart": set()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(req: str) -> tuple[str, set[str], str | None]:
    """``name[extra,...]==x; marker`` -> (normalized name, extras, marker)."""
    spec, _, marker = req.partition(";")
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", spec)
    assert m, req
    extras = {_norm(e) for e in (m.group(2) or "").split(",") if e.strip()}
    return _norm(m.group(1)), extras, marker.strip() or None


def _marker_ok(marker: str | None, extras: set[str]) -> bool:
    """Evaluate a Requires-Dist marker for Linux / CPython 3.11 with the given extras."""
    if marker is None:
        return True
    from packaging.markers import Marker

    m = Marker(marker)
    if "extra" in marker:
        return any(m.evaluate({"extra": e}) for e in extras) if extras else False
    return m.evaluate()


@cache
def _dist_requires(name: str) -> tuple[str, ...]:
    try:
        return tuple(metadata.distribution(name).requires or ())
    except metadata.PackageNotFoundError:
        return ()


def image_distributions(service: str | None, extras_wanted: set[str] | None = None) -> set[str]:
    """Every distribution ``pip install .[service,<service>]`` installs (radloop's own dependencies included);
    ``None``: ``pip install radloop``, the core alone; ``extras_wanted``: those extras instead."""
    project = PYPROJECT["project"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    todo: list[tuple[str, set[str]]] = [(_norm(r.split("[")[0].split("=")[0]), _requirement(r)[1])
                                        for r in project["dependencies"]]
    wanted = {"service", _norm(service)} if service else set(extras_wanted or ())
    seen_extras: set[str] = set()
    while wanted - seen_extras:  # radloop's own extras, self-references ("radloop[dicom]") followed
        e = (wanted - seen_extras).pop()
        seen_extras.add(e)
        for r in extras[e]:
            name, sub, _ = _requirement(r)
            if name == "radloop":
                wanted |= sub
            else:
                todo.append((name, sub))
    out: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, sub = todo.pop()
        if (name, frozenset(sub)) in visited:
            continue
        visited.add((name, frozenset(sub)))
        out.add(name)
        for r in _dist_requires(name):
            dep, dep_extras, marker = _requirement(r)
            if _marker_ok(marker, sub) if (marker and "extra" in marker) else _marker_ok(marker, set()):
                todo.append((dep, dep_extras))
    return out


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def importable_top_levels(dists: set[str]) -> set[str]:
    """The top-level module names the given distributions provide."""
    out = set()
    for top, names in _packages_distributions().items():
        if any(_norm(n) in dists for n in names):
            out.add(top)
    return out


@cache
def _graph():  # type: ignore[no-untyped-def]
    import grimp

    return grimp.build_graph("services", "shared", "training", "radloop", include_external_packages=True,
                             exclude_type_checking_imports=True)


def imported_third_party(service: str) -> set[str]:
    """Top-level third-party modules the service's package imports, directly or through shared/ and training/."""
    g = _graph()
    up = g.find_upstream_modules(f"services.{service}", as_package=True)
    return {m for m in up if "." not in m and m not in sys.stdlib_module_names and m not in FIRST_PARTY}


def test_every_service_has_its_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for service in SERVICES:
        assert _norm(service) in extras, f"pyproject.toml has no `{_norm(service)}` extra for services/{service}"
        assert f"{_norm(service)}" in extras["services"][0], f"the `services` extra (make setup) misses {service}"


def test_the_graph_sees_each_services_imports() -> None:
    """Not vacuous: the scan finds what each service is known to import."""
    assert {"fastapi", "aiobotocore", "pydantic", "opentelemetry"} <= imported_third_party("verification")
    assert {"pynetdicom", "pydicom", "imagecodecs"} <= imported_third_party("ingestion")
    assert {"torch", "torchvision"} <= imported_third_party("triage")
    assert "torch" in importable_top_levels(image_distributions("triage"))
    assert "moto" not in importable_top_levels(image_distributions("ingestion"))


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_imports_only_what_its_image_installs(service: str) -> None:
    provided = importable_top_levels(image_distributions(service))
    missing = imported_third_party(service) - provided
    assert not missing, (f"services/{service} imports {sorted(missing)}, which `pip install .[service,{service}]` "
                         "does not install: add it to the service's extra in pyproject.toml")


@pytest.mark.parametrize("service", SERVICES)
def test_heavy_and_local_only_packages_stay_out_of_service_images(service: str) -> None:
    imported = imported_third_party(service)
    provided = importable_top_levels(image_distributions(service))
    for module, allowed in HEAVY.items():
        if service not in allowed:
            assert module not in imported, f"{service} imports {module}"
            assert module not in provided, f"the {service} image would install {module}"
    # moto and Flask (the embedded endpoint) are in the `local` extra only
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not any("moto" in r for r in PYPROJECT["project"]["dependencies"])
    assert any(r.startswith("moto[server]") for r in extras["local"])


def test_torch_is_imported_only_by_triage_and_training_paths() -> None:
    g = _graph()
    importers: set[str] = set()
    for m in g.modules:
        if m.split(".")[0] in FIRST_PARTY and {"torch", "torchvision"} & g.find_modules_directly_imported_by(m):
            importers.add(m)
    assert importers, "the scan found no torch import at all"
    # The local harnesses that train or install a model (`radloop demo`, the chaos run) may; shared/, every other
    # service and the operator's CLI (radloop.cli, radloop.ops, radloop.status) may not.
    def forbidden(m: str) -> bool:
        if m.startswith("services."):
            return not m.startswith("services.triage.")
        return m.startswith(("shared.", "radloop.ops.", "radloop.local.")) or m in ("radloop.cli", "radloop.status")
    bad = {m for m in importers if forbidden(m)}
    assert not bad, f"torch imported outside triage/training: {sorted(bad)}"
    assert any(m.startswith("services.triage.") for m in importers) and any(m.startswith("training.") for m in importers)


def test_no_dependency_is_pinned_that_nothing_imports() -> None:
    """python-multipart was pinned and never imported (the STOW parser is services/ingestion/api/multipart.py)."""
    deps = [_requirement(r)[0] for r in PYPROJECT["project"]["dependencies"]]
    assert "python-multipart" not in deps
    for extra in ("service", "dicom", *(_norm(s) for s in SERVICES)):
        deps += [_requirement(r)[0] for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    assert "python-multipart" not in {_norm(line.split("==")[0]) for line in
                                      (ROOT / "constraints.txt").read_text().splitlines() if line.strip()}
    g = _graph()
    imported = {m for m in g.modules if "." not in m}
    # a pin is used when its distribution provides a module some first-party code imports, or it is a plugin/extra
    # that one of them loads at run time (pydicom's pixel decoders; pyjwt's crypto backend; uvicorn's event loop and
    # HTTP parser, chosen with loop="auto" and http="auto")
    plugins = {"pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle", "cryptography", "radloop",
               "opentelemetry-exporter-prometheus", "opentelemetry-instrumentation-fastapi",
               "opentelemetry-exporter-otlp-proto-http", "opentelemetry-sdk", "uvloop", "httptools"}
    for dep in set(deps) - plugins:
        tops = importable_top_levels({dep})
        assert tops & imported, f"{dep} is pinned but nothing in services/, shared/, training/ or radloop/ imports it"


_IMPORT_IN_ISOLATION = r"""
import importlib.machinery, json, sys
allowed = set(json.loads(sys.argv[1]))
first_party = set(json.loads(sys.argv[2]))
service = sys.argv[3]
refused = []

class ImageFinder:
    # The path finder as the image would have it: a third-party module outside the image's set is not there at all
    # (find_spec answers None, import raises ModuleNotFoundError), as if it had not been installed.
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.split(".")[0]
        if not (top in sys.stdlib_module_names or top in first_party or top in allowed or top.startswith("_")):
            refused.append(name)
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return importlib.machinery.PathFinder.find_distributions(*args, **kwargs)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()

sys.meta_path[:] = [ImageFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import os
os.environ.setdefault("RADLOOP_ENVIRONMENT", "local")
if service == "cli":  # `pip install radloop`: the operator's CLI alone
    from typer.testing import CliRunner
    from radloop.cli import app
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    print(json.dumps({"ok": True, "spec": "cli", "paths": len(r.output.splitlines()), "refused": sorted(set(refused))}))
    raise SystemExit(0)
if service == "cli-token":  # the same install, asked to mint a local token: a sentence to act on, not a traceback
    from typer.testing import CliRunner
    from radloop.cli import app
    r = CliRunner().invoke(app, ["worklist", "--url", "http://127.0.0.1:9"])
    print(json.dumps({"ok": True, "spec": "cli-token", "paths": 1, "exit": r.exit_code, "output": r.output,
                      "exception": repr(r.exception)}))
    raise SystemExit(0)
mod = importlib.import_module(f"services.{service}.bootstrap")
spec = mod.SPEC
from shared.service import build_app
app = build_app(spec)  # routes analysed (a Form field would need python-multipart here), the schema built
paths = sorted(app.openapi()["paths"])
print(json.dumps({"ok": True, "spec": spec.name, "paths": len(paths), "refused": sorted(set(refused))}))
"""


def _run_isolated(service: str, allowed: set[str]) -> dict:  # type: ignore[type-arg]
    r = subprocess.run([sys.executable, "-c", _IMPORT_IN_ISOLATION, json.dumps(sorted(allowed)),
                        json.dumps(sorted(FIRST_PARTY)), service], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RADLOOP_ENVIRONMENT": "local"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["spec"] == service and out["paths"] > 0
    return out


@pytest.mark.integration  # a fresh interpreter
def test_the_cli_alone_runs_with_the_core_dependencies() -> None:
    """`pip install radloop` (no extras) is enough for the operator's CLI: no fastapi, moto, torch or DICOM stack."""
    core = importable_top_levels(image_distributions(None))
    assert not {"fastapi", "moto", "torch", "pydicom", "opentelemetry"} & core
    _run_isolated("cli", core)


@pytest.mark.integration  # a fresh interpreter
def test_the_cli_alone_asks_for_a_token_it_cannot_mint() -> None:
    """Without the service extra (PyJWT, FastAPI) the CLI cannot mint a local development token: it says to pass
    --token (it raised ModuleNotFoundError)."""
    out = _run_isolated("cli-token", importable_top_levels(image_distributions(None)))
    assert out["exit"] == 2, out
    assert "--token" in out["output"] and "RADLOOP_TOKEN" in out["output"], out


@pytest.mark.integration  # a fresh interpreter per service
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_imports_in_its_image_dependency_set(service: str) -> None:
    out = _run_isolated(service, importable_top_levels(image_distributions(service)))
    # a package probed and absent but tolerated (optional imports guarded by try/except) is fine; say which
    print(service, "absent, probed as optional:", out["refused"])


@pytest.mark.parametrize("script", ["training.train", "training.preprocess", "training.evaluate"])
def test_the_training_image_installs_what_its_scripts_import(script: str) -> None:
    """training/Dockerfile installs `.[train]` only: the SageMaker jobs' scripts must import nothing else."""
    g = _graph()
    imported = {m for m in g.find_upstream_modules(script) if "." not in m and m not in sys.stdlib_module_names
                and m not in FIRST_PARTY}
    assert "torch" in imported or script == "training.preprocess"
    missing = imported - importable_top_levels(image_distributions(None, {"train"}))
    assert not missing, f"{script} imports {sorted(missing)}, which `.[train]` does not install"


def test_the_dockerfile_installs_the_service_set_and_cpu_only_torch() -> None:
    """The root Dockerfile installs `.[service,<SERVICE>]` for every image; torch only for triage, only from the CPU
    wheel index, before anything could pull PyPI's CUDA build."""
    text = (ROOT / "Dockerfile").read_text()
    pip_lines = [line.strip() for line in re.findall(r"pip install[^\n]*", text)]
    install = '".[service,$(python -c "import os; print(os.environ[\'SERVICE\'].replace(\'_\', \'-\'))")]"'
    assert any(install in line for line in pip_lines), pip_lines
    torch_lines = [line for line in pip_lines if "torch" in line]
    assert len(torch_lines) == 1, torch_lines
    (line,) = torch_lines
    assert "--index-url" in line and "--extra-index-url" not in line and "--no-deps" in line
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    block = text[text.index('if [ "$SERVICE" = "triage" ]'):text.index(line)]
    assert block.count("\n") <= 1, "the torch install is the triage branch's own"
    assert text.index(line) < text.index(install)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # the one install of radloop's own requirements names `service` and the service's extra, never local (moto,
    # Flask) or train
    assert [line for line in pip_lines if '".[' in line] == [f"pip install -c constraints.txt {install} \\"]
    assert "moto" not in code
