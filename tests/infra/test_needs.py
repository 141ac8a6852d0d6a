"""The declared needs (infra/radloop_infra/needs.py) against the services' code."""

from __future__ import annotations

import re
from pathlib import Path

from infra.radloop_infra import needs as N
from shared.topology import SERVICES, build_topology


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


def test_every_need_names_a_topology_table_or_bucket() -> None:
    topo = build_topology("radloop")
    for service, need in N.NEEDS.items():
        assert set(need.tables) <= set(topo.tables), service
        assert {x.bucket for x in need.s3} <= set(topo.buckets), service
        assert all(p.endswith("/") for x in need.s3 for p in x.prefixes), service
