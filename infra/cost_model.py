"""Monthly AWS cost of radloop's dev and prod environments, from a pricing table kept as data.

    python infra/cost_model.py [--measure] [--json out.json]

Inputs:
- ``infra/pricing.json``: list prices;
- ``infra/workload.json``: the brief's workloads (dev 10 studies and 4 trainings a month, prod 100 and 16);
- the stack's own configuration (``infra/radloop_infra/config.py``: task sizes, task counts, Spot; the endpoint
  list; the alarm count);
- the HTJ2K compression ratio, in this order:
  1. measured by the ingestion benchmark (``bench/results/ingest.json``);
  2. measured here with ``--measure`` (shared.htj2k on synthetic radiographs from training.synthetic);
  3. the fallback in workload.json, labelled as such.

Storage is shown after ``months_of_retention_shown`` months of accumulation, because images are kept.

The image store is priced twice (issue 22, :func:`store_comparison`): radloop's own store (S3 + DynamoDB) and AWS
HealthImaging, at the three volumes of ``store_comparison`` in workload.json. Neither option has run against a live
account; the HealthImaging prices in pricing.json say where they come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.radloop_infra.config import ENVIRONMENTS, EnvConfig  # noqa: E402
from shared.topology import SERVICES, build_topology  # noqa: E402

PRICING = REPO / "infra" / "pricing.json"
WORKLOAD = REPO / "infra" / "workload.json"
INGEST_BENCH = REPO / "bench" / "results" / "ingest.json"
#: Kept in step with infra/radloop_infra/security.py INTERFACE_ENDPOINTS (a test checks it).
INTERFACE_ENDPOINT_COUNT = 12
#: With image_store=healthimaging: the HealthImaging control-plane and runtime endpoints (security.py
#: HEALTHIMAGING_ENDPOINTS; a test checks it).
HEALTHIMAGING_ENDPOINT_COUNT = 2
#: Secrets Manager secrets of the stack: the pseudonymisation key and ingestion's de-identification key.
SECRET_COUNT = 2
AZS = 2
GB = 1024**3


def _find_ratio(doc: Any) -> float | None:
    """The first number under a key naming an HTJ2K/compression ratio, anywhere in the benchmark JSON."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            key = k.lower()
            if "ratio" in key and ("htj2k" in key or "compression" in key) and isinstance(v, int | float) and v > 0:
                return float(v)
        for v in doc.values():
            found = _find_ratio(v)
            if found:
                return found
    elif isinstance(doc, list):
        for v in doc:
            found = _find_ratio(v)
            if found:
                return found
    return None


def measure_ratio(n: int = 4, size: int = 1024) -> float:
    """Lossless HTJ2K ratio (raw 16-bit bytes / codestream bytes) on ``n`` synthetic radiographs."""
    from shared.htj2k import encode
    from training.synthetic import case_spec, render

    raw = coded = 0
    for i in range(n):
        px = render(case_spec(i, seed=7, size=size)).pixels
        raw += px.size * 2
        coded += len(encode(px))
    return raw / coded


def htj2k_ratio(workload: dict[str, Any], measure: bool) -> tuple[float, str]:
    if INGEST_BENCH.exists():
        found = _find_ratio(json.loads(INGEST_BENCH.read_text()))
        if found:
            return found, f"measured by the ingestion benchmark ({INGEST_BENCH.relative_to(REPO)})"
    if measure:
        return measure_ratio(), "measured now with shared.htj2k on 4 synthetic 1024x1024 radiographs"
    return float(workload["htj2k_ratio_fallback"]), f"fallback: {workload['htj2k_ratio_fallback_source']}"


def env_cost(env: EnvConfig, p: dict[str, Any], w: dict[str, Any], ratio: float) -> dict[str, Any]:
    """Monthly cost lines (USD) of one environment, plus the HTJ2K storage comparison."""
    h = p["hours_per_month"]
    load = w[env.name]
    images = load["studies_per_month"] * w["images_per_study"]
    lines: dict[str, float] = {}

    fargate = 0.0
    for service in SERVICES:
        size = env.size(service)
        per_task = (size.cpu / 1024 * p["fargate_vcpu_hour"] + size.memory_mib / 1024 * p["fargate_gb_hour"]) * h
        from infra.radloop_infra.needs import NEEDS  # the worker/http split is infra data

        if NEEDS[service].kind == "worker" and env.spot_workers:
            per_task *= 1 - p["fargate_spot_discount"]
        fargate += per_task * env.min_tasks
    lines["ECS Fargate (min tasks, 24/7; ADOT sidecar shares the task)"] = fargate
    lines["ALB"] = (p["alb_hour"] + p["alb_lcu_hour"] * p["alb_lcus"]) * h
    lines["NLB (DICOM TLS)"] = (p["nlb_hour"] + p["nlb_nlcu_hour"] * p["nlb_nlcus"]) * h
    lines[f"VPC interface endpoints ({INTERFACE_ENDPOINT_COUNT} x {AZS} AZ)"] = (
        INTERFACE_ENDPOINT_COUNT * AZS * p["interface_endpoint_hour_per_az"] * h)
    lines["KMS (3 CMKs + requests)"] = 3 * p["kms_key_month"] + images * 50 / 10_000 * p["kms_per_10k_requests"]
    lines[f"Secrets Manager ({SECRET_COUNT} secrets)"] = SECRET_COUNT * p["secret_month"]
    topo = build_topology(f"radloop-{env.name}")
    n_alarms = 2 * len(topo.queues) + 1 + 2 * 5 + 1 + 3  # DLQs, 5xx+unhealthy per HTTP service, worker, events
    tasks = len(SERVICES) * env.min_tasks
    lines[f"CloudWatch ({n_alarms} alarms, logs, Container Insights)"] = (
        n_alarms * p["cloudwatch_alarm_month"]
        + tasks * w["log_gb_per_task_month"] * (p["cloudwatch_logs_ingest_gb"] + p["cloudwatch_logs_store_gb_month"])
        + tasks * p["container_insights_per_task_month"])
    lines["CloudTrail S3 data events"] = images * 40 / 100_000 * p["cloudtrail_data_events_per_100k"]
    consumers = 5 * env.min_tasks
    polls = consumers * h * 3600 / w["consumer_poll_wait_s"]
    msgs = images * w["messages_per_image"]
    lines["SQS (long polling) + EventBridge + SNS"] = (
        (polls + 3 * msgs) / 1e6 * p["sqs_per_million"] + msgs / 1e6 * p["eventbridge_per_million"])
    lines["DynamoDB on demand (+PITR, backups)"] = (
        images * w["dynamodb_writes_per_image"] / 1e6 * p["dynamodb_write_per_million"]
        + images * w["dynamodb_reads_per_image"] / 1e6 * p["dynamodb_read_per_million"] + 0.01)
    lines["X-Ray traces"] = images * w["traces_per_image"] / 1e6 * p["xray_per_million_traces_recorded"]
    lines["ECR (service and training images)"] = (
        (5 * w["service_image_gb"] + w["triage_image_gb"] + w["training_image_gb"]) * p["ecr_gb_month"])
    lines[f"SageMaker trainings ({p['sagemaker_training_instance']} + processing, per workload.json)"] = (
        load["trainings_per_month"] * (w["training_hours"] * p["sagemaker_training_hour"]
                                       + w["processing_hours_per_training"] * p["sagemaker_processing_hour"]))

    # --- storage after N months ---------------------------------------------------------------------------------
    months = w["months_of_retention_shown"]
    raw_image = w["image_rows"] * w["image_columns"] * w["bits_allocated"] // 8
    raw_gb = images * months * raw_image / GB
    htj2k_gb = raw_gb / ratio
    tier = w["frames_tiered_share"]
    frame_price = (1 - tier) * p["s3_standard_gb_month"] + tier * p["s3_intelligent_tiering_gb_month_blend"]
    # What radloop stores: the original as received (assumed uncompressed here, the common case from modalities)
    # plus HTJ2K frames. The comparison is with storing frames uncompressed next to the original.
    with_htj2k = raw_gb * p["s3_standard_gb_month"] + htj2k_gb * frame_price
    without = raw_gb * p["s3_standard_gb_month"] + raw_gb * frame_price
    frames_only_saving = 1 - 1 / ratio
    lines[f"S3 images after {months} months"] = with_htj2k + images * 20 / 1000 * p["s3_put_per_1k"]
    total = sum(lines.values())
    return {
        "environment": env.name,
        "lines": {k: round(v, 2) for k, v in lines.items()},
        "total_per_month": round(total, 2),
        "nat_gateways_avoided_per_month": round(2 * p["nat_gateway_hour"] * h, 2),
        "storage": {
            "images_stored": images * months,
            "uncompressed_gb": round(raw_gb, 3),
            "htj2k_frames_gb": round(htj2k_gb, 3),
            "htj2k_ratio": round(ratio, 3),
            "frames_storage_saving_percent": round(100 * frames_only_saving, 1),
            "total_storage_saving_percent_with_originals": round(100 * (1 - with_htj2k / without), 1),
            "monthly_storage_usd_with_htj2k": round(with_htj2k, 4),
            "monthly_storage_usd_uncompressed_frames": round(without, 4),
        },
    }


def _store_volume(studies: int, p: dict[str, Any], w: dict[str, Any], ratio: float) -> dict[str, Any]:
    """Monthly cost (USD) of storing and serving the images of ``studies`` studies a month, with each store."""
    c = w["store_comparison"]
    months = w["months_of_retention_shown"]
    images = studies * w["images_per_study"]  # a month
    stored = images * months
    raw_image = w["image_rows"] * w["image_columns"] * w["bits_allocated"] // 8
    raw_gb = stored * raw_image / GB
    htj2k_gb = raw_gb / ratio
    cold = w["frames_tiered_share"]  # the share of the images untouched for 30+ days, the same for both stores
    frame_reads = images * c["views_per_image"] * c["frames_per_image"]
    metadata_reads = images * c["views_per_image"] * c["metadata_reads_per_view"]
    index = (images * w["dynamodb_writes_per_image"] / 1e6 * p["dynamodb_write_per_million"]
             + images * w["dynamodb_reads_per_image"] / 1e6 * p["dynamodb_read_per_million"]
             + stored * c["index_kb_per_image"] / 1024**2 * p["dynamodb_storage_gb_month"])
    originals = raw_gb * p["s3_standard_gb_month"]

    radloop = {
        "S3: originals as received": originals,
        "S3: HTJ2K frames (Intelligent-Tiering)": htj2k_gb * (
            (1 - cold) * p["s3_standard_gb_month"] + cold * p["s3_intelligent_tiering_gb_month_blend"]),
        "S3 requests": (images * c["s3_puts_per_image_radloop"] / 1000 * p["s3_put_per_1k"]
                        + (frame_reads + metadata_reads) / 1000 * p["s3_get_per_1k"]),
        "DynamoDB: instance index": index,
    }

    # HealthImaging bills an image set at 5 MB at least, on its size after its own lossless compression (assumed to
    # match radloop's HTJ2K ratio: both are lossless HTJ2K).
    set_gb = max(c["images_per_image_set"] * raw_image / ratio, p["healthimaging_min_image_set_mb"] * 1024**2) / GB
    hi_gb = stored / c["images_per_image_set"] * set_gb
    jobs = images / c["import_batch_size"]
    # GetImageSetMetadata once to index each image set; per view, its frames and its metadata; per import job, the
    # start and the polls (the import itself is free).
    api_calls = images / c["images_per_image_set"] + frame_reads + metadata_reads + jobs * (1 + c["polls_per_import_job"])
    healthimaging = {
        "HealthImaging storage (Frequent / Archive Instant Access)": hi_gb * (
            (1 - cold) * p["healthimaging_frequent_access_gb_month"]
            + cold * p["healthimaging_archive_instant_access_gb_month"]),
        "HealthImaging API requests": api_calls / 1000 * p["healthimaging_per_1k_api_requests"],
        # The adapter keeps each staged P10 object: WADO-RS instance retrieval returns it.
        "S3: originals as received": originals,
        "S3 requests": images / 1000 * p["s3_put_per_1k"] + jobs * 4 / 1000 * p["s3_get_per_1k"],
        "DynamoDB: instance index": index + images * c["extra_dynamodb_writes_per_image_healthimaging"] / 1e6
        * p["dynamodb_write_per_million"],
        f"VPC interface endpoints ({HEALTHIMAGING_ENDPOINT_COUNT} x {AZS} AZ)": (
            HEALTHIMAGING_ENDPOINT_COUNT * AZS * p["interface_endpoint_hour_per_az"] * p["hours_per_month"]),
    }
    return {
        "studies_per_month": studies,
        "images_stored": stored,
        "uncompressed_tb": round(raw_gb / 1024, 3),
        "radloop": {"lines": {k: round(v, 2) for k, v in radloop.items()}, "total": round(sum(radloop.values()), 2)},
        "healthimaging": {"lines": {k: round(v, 2) for k, v in healthimaging.items()},
                          "total": round(sum(healthimaging.values()), 2)},
    }


def store_comparison(p: dict[str, Any], w: dict[str, Any], ratio: float) -> list[dict[str, Any]]:
    """The image store's monthly cost with radloop's store and with HealthImaging, at each volume of workload.json."""
    return [_store_volume(n, p, w, ratio) for n in w["store_comparison"]["studies_per_month"]]


def model(measure: bool = False, ratio: float | None = None) -> dict[str, Any]:
    """The cost model for both environments, and the image store at three volumes. ``ratio`` overrides the HTJ2K
    ratio (docs/cost.md states the one its tables used)."""
    p = json.loads(PRICING.read_text())
    w = json.loads(WORKLOAD.read_text())
    if ratio is None:
        ratio, source = htj2k_ratio(w, measure)
    else:
        source = "given"
    return {"region": p["region"], "htj2k_ratio": round(ratio, 3), "htj2k_ratio_source": source,
            "environments": {name: env_cost(env, p, w, ratio) for name, env in ENVIRONMENTS.items()},
            "image_store": store_comparison(p, w, ratio)}


def render_markdown(m: dict[str, Any]) -> str:
    envs = m["environments"]
    names = list(envs)
    keys = list(envs[names[0]]["lines"])
    rows = [f"| item | {' | '.join(names)} |", f"|---|{'---:|' * len(names)}"]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(f"${envs[n]['lines'].get(k, 0):,.2f}" for n in names) + " |")
    rows.append("| **total per month** | " + " | ".join(f"**${envs[n]['total_per_month']:,.2f}**" for n in names)
                + " |")
    return "\n".join(rows)


def render_store_markdown(m: dict[str, Any]) -> str:
    """The image-store comparison: a summary row per volume, then every line of both stores."""
    vols = m["image_store"]
    rows = ["| studies a month | stored after a year (uncompressed) | radloop (S3 + DynamoDB) | AWS HealthImaging | "
            "HealthImaging / radloop |", "|---:|---:|---:|---:|---:|"]
    for v in vols:
        r, h = v["radloop"]["total"], v["healthimaging"]["total"]
        rows.append(f"| {v['studies_per_month']:,} | {v['uncompressed_tb']:,.2f} TB | ${r:,.2f} | ${h:,.2f} | "
                    f"{h / r:.2f}x |")
    rows += ["", "| item | " + " | ".join(f"{v['studies_per_month']:,}: {s}" for v in vols
                                            for s in ("radloop", "HealthImaging")) + " |",
             "|---|" + "---:|" * (2 * len(vols))]
    keys = list(dict.fromkeys([*vols[0]["radloop"]["lines"], *vols[0]["healthimaging"]["lines"]]))
    for k in keys:
        cells = [f"${v[s]['lines'][k]:,.2f}" if k in v[s]["lines"] else "-"
                 for v in vols for s in ("radloop", "healthimaging")]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    rows.append("| **total per month** | " + " | ".join(f"**${v[s]['total']:,.2f}**" for v in vols
                                                       for s in ("radloop", "healthimaging")) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", action="store_true", help="measure the HTJ2K ratio now if no benchmark result")
    ap.add_argument("--json", type=Path, help="also write the model as JSON here")
    ap.add_argument("--ratio", type=float, help="use this HTJ2K ratio (docs/cost.md's tables state theirs)")
    args = ap.parse_args(argv)
    m = model(args.measure, ratio=args.ratio)
    sys.stdout.write(render_markdown(m) + "\n\n")
    sys.stdout.write(f"The image store alone (HTJ2K ratio {m['htj2k_ratio']}):\n\n{render_store_markdown(m)}\n\n")
    for name, e in m["environments"].items():
        s = e["storage"]
        sys.stdout.write(
            f"{name}: {s['images_stored']} images after a year: {s['uncompressed_gb']} GB raw, "
            f"{s['htj2k_frames_gb']} GB as HTJ2K (ratio {s['htj2k_ratio']}): frames storage -"
            f"{s['frames_storage_saving_percent']}%, total with originals -"
            f"{s['total_storage_saving_percent_with_originals']}%\n")
    sys.stdout.write(f"HTJ2K ratio: {m['htj2k_ratio_source']}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(m, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
