"""The declared needs (infra/radloop_infra/needs.py) against the services' code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from infra.radloop_infra import needs as N
from shared.topology import SERVICES, build_topology

REPO = Path(__file__).resolve().parents[2]


def test_needs_cover_the_tables_and_buckets_each_service_names_in_its_code() -> None:
    """A grep-level cross-check: every topology table or bucket a service's code names is among its declared needs
    (so the deployed role is not missing a permission the code will use)."""
    src = Path(__file__).resolve().parents[2] / "services"
    for service in SERVICES:
        text = "\n".join(p.read_text() for p in (src / service).rglob("*.py"))
        tables = set(re.findall(r'table\("([a-z_]+)"\)', text))
        buckets = set(re.findall(r'bucket\("([a-z_]+)"\)', text))
        need = N.NEEDS[service]
        assert tables <= set(need.tables), f"{service} uses tables {sorted(tables - set(need.tables))}"
        if service != "pipeline_orchestrator":  # it only writes the images bucket's name into manifests
            assert buckets <= {x.bucket for x in need.s3}, f"{service} uses buckets {buckets}"


@pytest.mark.parametrize("image_store", ["radloop", "healthimaging"])
def test_every_need_names_a_topology_table_or_bucket(image_store: str) -> None:
    topo = build_topology("radloop")
    for service in N.NEEDS:
        s3 = N.s3_needs(service, image_store)
        assert set(N.table_needs(service, image_store)) <= set(topo.tables), service
        assert {x.bucket for x in s3} <= set(topo.buckets), service
        assert all(p.endswith("/") for x in s3 for p in x.prefixes), service
        hi = N.healthimaging_need(service, image_store)
        if hi:
            assert hi.access in N.HEALTHIMAGING_ACTIONS and hi.access in N.HEALTHIMAGING_KEY_ACTIONS, service


def test_healthimaging_adds_grants_only_when_chosen() -> None:
    """With radloop's store no role gains anything; with HealthImaging only the services that touch images do, and
    only HealthImaging actions, the data key's DescribeKey and (ingestion) passing the import role."""
    for service in N.NEEDS:
        base, hi = N.expected_actions(service), N.expected_actions(service, "healthimaging")
        assert N.expected_actions(service, "radloop") == base and base <= hi
        added = hi - base
        if N.NEEDS[service].healthimaging is None:
            assert not added, service
        elif N.NEEDS[service].healthimaging.access == "originals":
            # interop reads the kept import objects: s3:GetObject, which it has already, on one more prefix
            assert not added and N.healthimaging_need(service, "healthimaging").s3, service
        else:
            assert added and all(a.startswith("medical-imaging:") or a in {"kms:DescribeKey", "iam:PassRole"}
                                 for a in added), (service, added)
    assert "iam:PassRole" in N.expected_actions("ingestion", "healthimaging") - N.expected_actions("ingestion")


def test_the_services_healthimaging_prefixes_are_the_granted_ones() -> None:
    """The store's settings default to the prefixes the grants name (and the stack sets them explicitly too)."""
    settings = pytest.importorskip("shared.image_store.settings")
    fields = settings.ImageStoreSettings.model_fields
    assert fields["healthimaging_import_prefix"].default == N.HEALTHIMAGING_IMPORT_PREFIX
    assert fields["healthimaging_output_prefix"].default == N.HEALTHIMAGING_OUTPUT_PREFIX


# -- the S3 key prefixes each service writes, against its write grants ---------------------------------------------
#: S3 client calls that create or remove objects.
S3_WRITE_CALLS = frozenset({"put_object", "copy_object", "delete_object", "delete_objects", "upload_fileobj",
                            "upload_file", "create_multipart_upload", "upload_part", "complete_multipart_upload"})
#: Access levels that allow writing (the rest read only).
WRITE_LEVELS = frozenset({"write", "read_write", "move"})
_SAMPLE_ARGS = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", "frame": 1, "model_version": 1,
                "sha256": "0" * 64, "run_id": "run-1", "key": "imports/a.dcm"}


def _top(key: str) -> str:
    return key.split("/", 1)[0] + "/"


def storage_prefixes() -> dict[str, str]:
    """Every name in :mod:`shared.storage` that spells a key (builder or constant) -> the top-level prefix it is under.

    Builders are called with sample arguments, so the prefix is the one the code really produces.
    """
    import inspect

    from shared import storage

    out: dict[str, str] = {}
    for name, value in vars(storage).items():
        if name.startswith("_"):
            continue
        if isinstance(value, str) and "/" in value and name.isupper():
            out[name] = _top(value)
        elif inspect.isfunction(value) and value.__module__ == storage.__name__:
            params = inspect.signature(value).parameters
            if not set(params) <= set(_SAMPLE_ARGS):
                continue
            key = value(**{p: _SAMPLE_ARGS[p] for p in params})
            if isinstance(key, str) and "/" in key:
                out[name] = _top(key)
    return out


def _module_prefix_constants(tree: ast.Module) -> dict[str, str]:
    """``SOMETHING_PREFIX = "x/"`` at module level: a service's own key prefixes (ingestion's ``quarantine/``)."""
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.endswith("_PREFIX") and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str) and node.value.value.endswith("/")):
            out[node.targets[0].id] = _top(node.value.value)
    return out


def _identifiers(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def _called(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def written_prefixes(service: str) -> set[str]:
    """The top-level S3 prefixes the service's code writes.

    A function writes when it calls an S3 write (:data:`S3_WRITE_CALLS`) or, transitively, a function that does
    (``ImageObjects.put_all``, ``DropFolder.quarantine``...; shared helpers such as
    ``shared.bootstrap.ensure_no_champion_marker`` count for the services that call them). The prefixes it writes are
    those of the key names it mentions: :mod:`shared.storage` builders and constants (also as attributes, e.g.
    ``prep.original_key``), ``shared.instance_index.offsets_object_key`` and the service's own ``*_PREFIX`` constants.
    """
    root = REPO / "services" / service
    files = [*root.rglob("*.py"), *(REPO / "shared").rglob("*.py")]
    trees = {p: ast.parse(p.read_text()) for p in files}
    names = {k: {v} for k, v in {**storage_prefixes(), "offsets_object_key": "frames/"}.items()}
    for p, tree in trees.items():
        if root in p.parents:
            names.update({k: {v} for k, v in _module_prefix_constants(tree).items()})
    functions = [(p, f) for p, tree in trees.items() for f in ast.walk(tree)
                 if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
    # The service's own key helpers (ingestion's ``rejected_key``) stand for the prefixes their return value uses.
    for p, f in functions:
        if root in p.parents and not _called(f) & S3_WRITE_CALLS and f.name not in names:
            returned = set().union(*(_identifiers(r.value) for r in ast.walk(f)
                                     if isinstance(r, ast.Return) and r.value is not None))
            mentioned = set().union(*(names[i] for i in returned if i in names))
            if mentioned:
                names[f.name] = mentioned
    writers = set(S3_WRITE_CALLS)
    writing: list[tuple[Path, ast.AST]] = []
    for _ in range(10):  # the call graph is shallow; bounded closure
        found = [(p, f) for p, f in functions if _called(f) & writers]
        new = {f.name for _p, f in found} - writers
        writing = found
        if not new:
            break
        writers |= new
    service_code = "\n".join(p.read_text() for p in root.rglob("*.py"))
    out: set[str] = set()
    for p, f in writing:
        # a shared helper writes for a service only if the service calls it
        if root not in p.parents and not re.search(rf"\b{f.name}\(", service_code):
            continue
        out = out.union(*(names[i] for i in _identifiers(f) if i in names))
    return out


def granted_write_prefixes(service: str) -> set[str]:
    """Top-level prefixes, as :func:`written_prefixes` finds them (interop's ``imports/interop/`` is under ``imports/``),
    with either image store (a service's code holds both stores' writes)."""
    return {_top(p) for need in N.s3_needs(service, "healthimaging") if need.access in WRITE_LEVELS
            for p in need.prefixes}


def test_storage_prefixes_are_read_from_the_code() -> None:
    """The scan sees the layout (a scan that found nothing would pass the comparison below vacuously)."""
    prefixes = storage_prefixes()
    assert prefixes["original_key"] == "dicom/" and prefixes["frame_key"] == "frames/"
    assert prefixes["IMPORTS_REJECTED_PREFIX"] == "imports-rejected/" and prefixes["heatmap_key"] == "heatmaps/"
    assert written_prefixes("ingestion") >= {"dicom/", "frames/", "metadata/", "imports-rejected/"}
    assert written_prefixes("triage") == {"heatmaps/"}
    assert written_prefixes("streaming_gateway") == set()


@pytest.mark.parametrize("service", SERVICES)
def test_every_prefix_a_service_writes_is_granted_to_its_role(service: str) -> None:
    """A write the role does not allow works against the embedded endpoint (moto ignores IAM) and answers 500 in AWS:
    ingestion's ``quarantine/`` (a burned-in image) was such a write."""
    missing = written_prefixes(service) - granted_write_prefixes(service)
    assert not missing, f"{service} writes {sorted(missing)} but infra/radloop_infra/needs.py does not grant it"


def test_the_audit_table_is_append_only_for_every_service() -> None:
    for service, need in N.NEEDS.items():
        assert need.tables.get("audit") == "append", service
    assert N.DDB_ACTIONS["append"] == ("dynamodb:PutItem",)
