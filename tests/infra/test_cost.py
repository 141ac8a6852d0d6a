"""The cost model: data-driven, consistent with the stack's configuration, and rerunnable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra import cost_model
from infra.radloop_infra.config import ENVIRONMENTS

REPO = Path(__file__).resolve().parents[2]


def test_model_covers_both_environments_and_follows_the_stack_config() -> None:
    m = cost_model.model(measure=False)
    dev, prod = m["environments"]["dev"], m["environments"]["prod"]
    assert 0 < dev["total_per_month"] < prod["total_per_month"]
    assert abs(sum(dev["lines"].values()) - dev["total_per_month"]) < 0.05
    # prod stores ten times the images of dev (100 vs 10 studies a month)
    assert prod["storage"]["images_stored"] == 10 * dev["storage"]["images_stored"]
    s = prod["storage"]
    assert s["frames_storage_saving_percent"] == pytest.approx(100 * (1 - 1 / s["htj2k_ratio"]), abs=0.1)
    assert s["total_storage_saving_percent_with_originals"] < s["frames_storage_saving_percent"]
    assert ENVIRONMENTS["dev"].spot_workers and not ENVIRONMENTS["prod"].spot_workers


# Importing aws_cdk starts jsii's node process: integration tier (tests/conftest.py), whatever ran before.
@pytest.mark.integration
def test_endpoint_count_matches_the_stack() -> None:
    pytest.importorskip("aws_cdk")
    from infra.radloop_infra.security import INTERFACE_ENDPOINTS

    assert len(INTERFACE_ENDPOINTS) == cost_model.INTERFACE_ENDPOINT_COUNT


def test_prices_are_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pricing = json.loads(cost_model.PRICING.read_text())
    base = cost_model.model()["environments"]["prod"]
    pricing["interface_endpoint_hour_per_az"] *= 2
    edited = tmp_path / "pricing.json"
    edited.write_text(json.dumps(pricing))
    monkeypatch.setattr(cost_model, "PRICING", edited)
    doubled = cost_model.model()["environments"]["prod"]
    key = next(k for k in base["lines"] if k.startswith("VPC interface endpoints"))
    assert doubled["lines"][key] == pytest.approx(2 * base["lines"][key], abs=0.01)


def test_ratio_is_read_from_the_ingestion_benchmark_json() -> None:
    doc = {"results": [{"modality": "CR", "htj2k_compression_ratio": 2.31}]}
    assert cost_model._find_ratio(doc) == 2.31
    assert cost_model._find_ratio({"throughput": 5}) is None


# -- the image store: radloop's own against AWS HealthImaging (issue 22) ----------------------------------------------
def test_store_comparison_prices_both_stores_at_three_growing_volumes() -> None:
    vols = cost_model.model(ratio=1.68)["image_store"]
    assert [v["studies_per_month"] for v in vols] == sorted(v["studies_per_month"] for v in vols)
    assert len(vols) == 3
    for store in ("radloop", "healthimaging"):
        totals = [v[store]["total"] for v in vols]
        assert totals == sorted(totals) and totals[0] < totals[-1], store
        for v in vols:
            assert sum(v[store]["lines"].values()) == pytest.approx(v[store]["total"], abs=0.05)
    # ten times the studies, (close to) ten times the storage: the fixed endpoint cost is the only constant line
    small, large = vols[1], vols[2]
    assert large["images_stored"] == 10 * small["images_stored"]
    key = next(k for k in large["healthimaging"]["lines"] if k.startswith("VPC interface endpoints"))
    assert large["healthimaging"]["lines"][key] == small["healthimaging"]["lines"][key] > 0


def test_healthimaging_prices_are_data_with_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pricing = json.loads(cost_model.PRICING.read_text())
    src = pricing["_healthimaging_sources"]
    assert src["prices"].startswith("https://aws.amazon.com/healthimaging/pricing")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", src["read"])
    key = "HealthImaging storage (Frequent / Archive Instant Access)"
    base = cost_model.model(ratio=1.68)["image_store"][-1]["healthimaging"]["lines"][key]
    pricing["healthimaging_frequent_access_gb_month"] *= 2
    pricing["healthimaging_archive_instant_access_gb_month"] *= 2
    edited = tmp_path / "pricing.json"
    edited.write_text(json.dumps(pricing))
    monkeypatch.setattr(cost_model, "PRICING", edited)
    assert cost_model.model(ratio=1.68)["image_store"][-1]["healthimaging"]["lines"][key] == pytest.approx(
        2 * base, rel=0.001)


def test_healthimaging_bills_small_image_sets_at_five_megabytes() -> None:
    p = json.loads(cost_model.PRICING.read_text())
    w = json.loads(cost_model.WORKLOAD.read_text())
    w.update(image_rows=64, image_columns=64)  # 8 KB images: far below the 5 MB minimum
    v = cost_model.store_comparison(p, w, ratio=1.68)[0]
    stored_gb = v["images_stored"] * p["healthimaging_min_image_set_mb"] / 1024
    share = w["frames_tiered_share"]
    expected = stored_gb * ((1 - share) * p["healthimaging_frequent_access_gb_month"]
                            + share * p["healthimaging_archive_instant_access_gb_month"])
    key = "HealthImaging storage (Frequent / Archive Instant Access)"
    assert v["healthimaging"]["lines"][key] == pytest.approx(expected, abs=0.01)


# Importing aws_cdk starts jsii's node process: integration tier (tests/conftest.py), whatever ran before.
@pytest.mark.integration
def test_healthimaging_endpoint_count_matches_the_stack() -> None:
    pytest.importorskip("aws_cdk")
    from infra.radloop_infra.security import HEALTHIMAGING_ENDPOINTS

    assert len(HEALTHIMAGING_ENDPOINTS) == cost_model.HEALTHIMAGING_ENDPOINT_COUNT


def test_docs_cost_shows_the_models_store_comparison() -> None:
    """docs/cost.md's table is the script's output at the HTJ2K ratio the page states (rerun the script after editing
    pricing.json or workload.json, and paste)."""
    doc = (REPO / "docs" / "cost.md").read_text()
    m = re.search(r"infra/cost_model\.py --ratio ([0-9.]+)", doc)
    assert m, "docs/cost.md does not say which ratio its image-store table used"
    table = cost_model.render_store_markdown(cost_model.model(ratio=float(m.group(1))))
    assert table in doc, "docs/cost.md's image-store table differs from infra/cost_model.py's; rerun and paste:\n" + table
    assert "not run against a live" in doc.lower()


def test_docs_architecture_build_or_buy_shows_the_models_totals() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert "## Build or buy" in doc and "not run against a live aws account" in doc.lower()
    m = re.search(r"infra/cost_model\.py --ratio ([0-9.]+)", (REPO / "docs" / "cost.md").read_text())
    assert m
    for v in cost_model.model(ratio=float(m.group(1)))["image_store"]:
        row = f"| {v['studies_per_month']:,} | ${v['radloop']['total']:,.2f} | ${v['healthimaging']['total']:,.2f} |"
        assert row in doc, f"docs/architecture.md's build-or-buy table lacks {row}"
