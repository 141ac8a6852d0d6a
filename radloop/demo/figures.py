"""The figures of the demo report, read back from the platform at the end: its APIs (models, runs, the champion),
its tables and buckets (scores, the instance index, storage, heat maps) and the local trace sink."""

from __future__ import annotations

import json
import os
import platform as pyplatform
import time
from typing import Any

from rich.console import Console

from radloop.demo.api import PlatformApi
from radloop.demo.config import DemoConfig, DemoState
from radloop.traces import build_trace_trees, render_trace
from shared.approval import judge
from shared.aws import boto3_client
from shared.dicom.sop_classes import DERIVED_SOP_CLASSES
from shared.instance_index import INSTANCE_PREFIX
from shared.settings import Settings


def _ci(block: Any, key: str = "auc") -> list[float] | None:
    if not isinstance(block, dict) or block.get("low") is None:
        return None
    return [round(float(block[key]), 4), round(float(block["low"]), 4), round(float(block["high"]), 4)]


def _locked_figures(evidence: dict[str, Any]) -> dict[str, Any]:
    """A version's locked-set figures: the set's version and size, its AUC and the champion's on the same cases, each
    as [value, 95% low, 95% high], the paired difference likewise, and the policy's verdict."""
    op = evidence.get("operating_point") or {}
    return {"locked_set": evidence.get("locked_set"), "auc_ci": _ci(evidence.get("challenger")),
            "champion_auc_ci": _ci(evidence.get("champion")), "paired_diff_ci": _ci(evidence.get("paired"), "diff"),
            "comparison": evidence.get("comparison"), "specificity_ci": op.get("specificity_ci"),
            "sensitivity_ci": op.get("sensitivity_ci"), "threshold_ci": op.get("threshold_ci"),
            "validation_positives": op.get("validation_positives"),
            "brier": (evidence.get("calibration") or {}).get("brier"),
            "ece": (evidence.get("calibration") or {}).get("ece")}


def quality_target(cfg: DemoConfig, model_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The final champion against the demo's quality target on the locked set: its AUC, and its sensitivity and
    specificity at the operating threshold it ships with (chosen on validation data, so the strict reading), with the
    best specificity its locked-set ROC curve offers at the target sensitivity beside them (for the record)."""
    target = {"auc": cfg.target_auc, "sensitivity": cfg.target_sensitivity, "specificity": cfg.target_specificity}
    champ = next((m for m in model_rows if m.get("champion")), None)
    if champ is None or champ.get("auc") is None:
        return {"target": target, "met": False, "version": None, "reason": "no champion"}
    roc = champ.get("roc") or {}
    best = max((1 - f for f, t in zip(roc.get("fpr") or [], roc.get("tpr") or [], strict=True) if t >= cfg.target_sensitivity),
               default=None)
    auc, sens, spec = champ["auc"], champ.get("sensitivity"), champ.get("specificity")
    unmet = [name for name, value, floor in (("AUC", auc, cfg.target_auc), ("sensitivity", sens, cfg.target_sensitivity),
                                              ("specificity", spec, cfg.target_specificity))
             if value is None or value < floor]
    return {"target": target, "met": not unmet, "version": champ.get("version"), "auc": auc, "sensitivity": sens,
            "specificity": spec, "best_specificity_at_target_sensitivity": best,
            "reason": "met" if not unmet else "below the target: " + ", ".join(unmet)}


def models_by_version(api: PlatformApi, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each registered version's full record (its history and locked-set evidence)."""
    return [api.model(int(r["version"])) for r in rows if r.get("version") is not None]


def collect_figures(cfg: DemoConfig, state: DemoState, api: PlatformApi, endpoint: str, streaming: dict[str, Any],
                    started: float) -> dict[str, Any]:
    """Every figure of the report (``report.json``): ``endpoint`` is the platform's AWS endpoint, ``streaming`` the
    CT streaming figures and ``started`` the wall time the demo began."""
    s = api.settings.model_copy(update={"aws_endpoint_url": endpoint})
    models = api.models()
    runs = api.runs()
    champion = api.champion()
    ddb = boto3_client(s, "dynamodb")
    s3 = boto3_client(s, "s3")
    topo = s.topology

    # records with no status are bare "read" marks (an image read before triage wrote anything for it)
    scores = [sc for sc in _scan(ddb, topo.table("scores")) if sc.get("status")]
    everything = [i for i in _scan(ddb, topo.table("instances")) if i.get("sk", "").startswith(INSTANCE_PREFIX)]
    # Acquired images only: the SRs and SEGs the interop service derived (docs/interop.md) are counted apart.
    index = [i for i in everything if i.get("sop_class_uid") not in DERIVED_SOP_CLASSES]
    stored_at = {i["sop_uid"]: _ts(i.get("stored_at")) for i in index}
    stored_to_scored = [
        (_ts(sc.get("scored_at")) - stored_at[sc["sop_uid"]]) * 1000
        for sc in scores
        if sc.get("sop_uid") in stored_at and _ts(sc.get("scored_at")) and stored_at[sc["sop_uid"]]
    ]
    versions_used: dict[str, int] = {}
    for sc in scores:
        key = f"v{sc['model_version']}" if sc.get("model_version") not in (None, "") else sc.get("status", "?")
        versions_used[str(key)] = versions_used.get(str(key), 0) + 1

    model_rows, learning, decisions = [], [], []
    for summary in sorted(models, key=lambda x: int(x.get("version", 0))):
        m = api.model(int(summary["version"]))
        metrics = m.get("metrics") or {}
        lineage = m.get("lineage") or {}
        labels = lineage.get("label_count") or sum((lineage.get("label_counts") or {}).values()) or None
        ev = _evaluation(s3, m)
        evidence = m.get("evidence") or {}
        row = {"version": m.get("version"), "status": m.get("status") or m.get("approval_status"),
               "auc": metrics.get("auc"), "sensitivity": metrics.get("sensitivity"),
               "specificity": metrics.get("specificity"), "labels": labels, "run_id": m.get("run_id"),
               "parent": lineage.get("parent_version"),
               "champion": bool(champion and champion.get("version") == m.get("version")),
               "threshold": m.get("threshold", metrics.get("threshold")), "roc": ev.get("roc"),
               "confusion_matrix": ev.get("confusion_matrix"), **_locked_figures(evidence)}
        model_rows.append(row)
        if row["auc"] is not None and labels:
            learning.append({"version": row["version"], "labels": labels, "auc": row["auc"]})
        for h in m.get("history") or []:
            decisions.append({"version": m.get("version"), "decision": h.get("action"), "by": h.get("by"),
                              "reason": h.get("reason"), "at": h.get("at")})
    run_rows = [{"run_id": r.get("run_id"), "status": r.get("status"), "trigger": r.get("trigger"),
                 "labels": r.get("label_count"), "duration_s": _duration(r),
                 "failure_reason": r.get("failure_reason")} for r in runs]
    verified_to_training = []
    for r in runs:
        st = _ts(r.get("created_at"))
        before = [t for t in state.read_times if st and t <= st]
        if before:
            verified_to_training.append(st - max(before))

    storage = _storage(s3, topo.bucket("images"), index)
    journey = _journey(api.settings)
    heatmaps = _heatmaps(s3, topo.bucket("images"), scores)
    import torch

    approved = [m for m in model_rows if m["status"] in ("Approved", "approved")]
    later_scored_by_model = any(k.startswith("v") for k in versions_used)
    problems = list(state.errors)
    policy = cfg.approval_policy()
    # no approval the shipped policy would not make: each automatic decision, judged again from its evidence
    records = models_by_version(api, model_rows)
    for m in records:
        if m.get("status") == "rejected":
            continue
        policy_approved = any(h.get("action") == "approved" and h.get("by") == "policy" for h in m.get("history") or [])
        if policy_approved and not judge(policy, m.get("evidence")).approved:
            problems.append(f"v{m.get('version')} was approved by a policy other than the shipped one")
    if cfg.expect_approval:
        if not approved:
            problems.append("no model was approved")
        if not later_scored_by_model:
            problems.append("triage scored no instance with an approved model")
    elif not model_rows and not any(str(r.get("failure_reason") or "").startswith("The model was not registered")
                                    for r in runs):
        # the pipeline's gate (the policy's auc_floor) refusing to register a model is a decision too
        problems.append("no model was registered, and no run was refused by the policy's gate")
    elif not approved and not all(m.get("decision") == "pending" and m.get("decision_reason") for m in records):
        problems.append("a model was left without a decision and its reasons")
    loop_ok = not problems
    elapsed = time.time() - started
    read_acc = (sum(1 for x in state.reads if x["label"] == x["truth"]) / len(state.reads)
                if state.reads else None)
    return {
        "problems": problems,
        "summary": {
            "loop_succeeded": loop_ok,
            "headline": (f"The loop ran by itself: {len(runs)} training run(s), {len(approved)} model(s) approved; "
                         f"champion v{champion.get('version') if champion else '–'}"
                         + ("" if approved else " (pending, with the shipped policy's reasons: see Approvals)")
                         + "." if loop_ok else
                         "The loop did not complete: " + "; ".join(problems[:4])),
            "kpis": {"radiographs": len(state.truth), "verified labels": len(state.reads),
                     "training runs": len(runs), "models approved": len(approved),
                     "first image (ms)": streaming.get("first_image_ms"),
                     "HTJ2K saving (%)": storage.get("saving_pct"), "wall time (s)": round(elapsed, 1)},
        },
        "counts": {"radiographs": len(state.truth), "ct_slices": len(state.ct_files),
                   "sent_by": state.sent_by, "indexed_instances": len(index),
                   "derived_instances": len(everything) - len(index), "scores": len(scores),
                   "scored_by": versions_used, "reads": len(state.reads), "runs": len(runs),
                   "models": len(models), "reader_accuracy": read_acc},
        "models": model_rows,
        "policy": policy.as_dict(),
        # the one locked evaluation set every version was scored on (its newest version among the models)
        "locked_set": max((m["locked_set"] for m in model_rows if m.get("locked_set")),
                          key=lambda x: x.get("version") or 0, default=None),
        "learning_curve": learning,
        "decisions": decisions,
        "runs": run_rows,
        "champion": champion,
        "quality_target": quality_target(cfg, model_rows),
        "latency": {"ingest_ms": state.ingest_ms, "stored_to_scored_ms": stored_to_scored,
                    "verified_to_training_s": verified_to_training},
        "streaming": streaming,
        "storage": storage,
        "journey": journey,
        "heatmaps": heatmaps,
        "errors": state.errors,
        "stages": dict(state.stages),
        "environment": {"python": pyplatform.python_version(), "torch": torch.__version__,
                        "machine": pyplatform.machine(), "cpus": os.cpu_count(), "os": pyplatform.platform(),
                        "seed": cfg.seed, "config": json.dumps({k: str(v) for k, v in cfg.__dict__.items()})},
    }


def _scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"TableName": table}
    for _ in range(10_000):
        resp = ddb.scan(**kw)
        out += [{k: _plain(v) for k, v in it.items()} for it in resp.get("Items", [])]
        if "LastEvaluatedKey" not in resp:
            break
        kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
    return out


def _plain(v: dict[str, Any]) -> Any:
    (t, x), = v.items()
    if t == "N":
        return float(x) if "." in x or "e" in x.lower() else int(x)
    if t in ("S", "BOOL"):
        return x
    if t == "L":
        return [_plain(i) for i in x]
    if t == "M":
        return {k: _plain(i) for k, i in x.items()}
    if t == "NULL":
        return None
    return x


def _ts(v: Any) -> float:
    if v in (None, ""):
        return 0.0
    if isinstance(v, (int, float)):
        return float(v)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _duration(r: dict[str, Any]) -> float | None:
    a, b = _ts(r.get("created_at")), _ts(r.get("ended_at"))
    return round(b - a, 1) if a and b else None


def _evaluation(s3: Any, model: dict[str, Any]) -> dict[str, Any]:
    uri = model.get("evaluation_uri") or (model.get("lineage") or {}).get("evaluation_uri")
    if not uri or not str(uri).startswith("s3://"):
        return {}
    bucket, key = str(uri)[5:].split("/", 1)
    try:
        ev = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception:
        return {}
    m = ev.get("binary_classification_metrics", {})
    out: dict[str, Any] = {}
    roc = m.get("receiver_operating_characteristic_curve") or ev.get("roc") or {}
    if roc.get("false_positive_rates") and roc.get("true_positive_rates"):
        out["roc"] = {"fpr": roc["false_positive_rates"], "tpr": roc["true_positive_rates"],
                      "auc": m.get("auc", {}).get("value")}
    cm = m.get("confusion_matrix")
    if isinstance(cm, dict):
        flat = {}
        for k in ("tp", "fp", "fn", "tn"):
            v = cm.get(k)
            flat[k] = v.get("value") if isinstance(v, dict) else v
        if any(flat.values()):
            out["confusion_matrix"] = flat
        elif "1" in cm and "0" in cm:
            out["confusion_matrix"] = {"tp": cm["1"].get("1"), "fn": cm["1"].get("0"), "fp": cm["0"].get("1"),
                                       "tn": cm["0"].get("0")}
    return out


def _storage(s3: Any, bucket: str, index: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = {"dicom/": 0, "frames/": 0}
    for prefix in sizes:
        token = None
        for _ in range(10_000):
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            resp = s3.list_objects_v2(**kw)
            sizes[prefix] += sum(o["Size"] for o in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not token:
                break
    raw = sum(int(i.get("rows", 0)) * int(i.get("columns", 0)) * int(i.get("number_of_frames", 1)) *
              int(i.get("samples_per_pixel", 1)) * (int(i.get("bits_allocated", 16)) // 8) for i in index)
    frames = sum(int(i.get("number_of_frames", 1)) for i in index)
    ratio = raw / sizes["frames/"] if sizes["frames/"] else None
    return {"instances": len(index), "frames": frames, "raw_pixel_bytes": raw, "original_bytes": sizes["dicom/"],
            "htj2k_bytes": sizes["frames/"], "ratio": round(ratio, 2) if ratio else None,
            "saving_pct": round(100 * (1 - sizes["frames/"] / raw), 1) if raw and sizes["frames/"] else None}


def _journey(settings: Settings) -> dict[str, Any]:
    """The richest trace that starts with a STOW-RS request: one image's path through the services."""
    from shared.telemetry import read_local_spans

    spans = read_local_spans(settings.traces_dir)
    groups = build_trace_trees(spans)
    best = None
    for tid, g in groups.items():
        if any("studies" in s["name"] and "POST" in s["name"] for s in g):
            services = {s.get("service") for s in g}
            if best is None or len(services) > best[1]:
                best = (tid, len(services), g)
    if best is None:
        return {}
    tid, _, g = best
    console = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_trace(g))
    return {"trace_id": tid, "spans": len(g), "services": sorted({str(s.get("service")) for s in g}),
            "tree_text": console.export_text()}


def _heatmaps(s3: Any, bucket: str, scores: list[dict[str, Any]], n: int = 4) -> list[dict[str, Any]]:
    import base64

    out = []
    for sc in sorted(scores, key=lambda x: -float(x.get("probability") or 0)):
        key = sc.get("heatmap_key")
        if not key:
            continue
        try:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:
            continue
        out.append({"sop_uid": sc["sop_uid"], "probability": sc.get("probability"),
                    "model_version": sc.get("model_version"),
                    "data_uri": "data:image/png;base64," + base64.b64encode(data).decode()})
        if len(out) >= n:
            break
    return out
