"""The demo report: ``demo-report/index.html`` (self-contained: charts inlined as PNG) and ``report.json``.

The JSON holds every figure the HTML shows, so the two always agree and tests can check the numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SECTIONS = ("models", "decisions", "latency", "streaming", "storage", "journey", "heatmaps", "environment")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _roc_chart(models: list[dict[str, Any]]) -> str | None:
    curves = [(m["version"], m.get("roc")) for m in models if m.get("roc")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for version, roc in curves:
        ax.plot(roc["fpr"], roc["tpr"], label=f"v{version} (AUC {roc.get('auc', float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC of each version on its test split")
    ax.legend(fontsize=8)
    return _png(fig)


def _learning_chart(points: list[dict[str, Any]]) -> str | None:
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [p["labels"] for p in points]
    ys = [p["auc"] for p in points]
    ax.plot(xs, ys, "o-")
    for p in points:
        ax.annotate(f"v{p['version']}", (p["labels"], p["auc"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("verified labels used for training")
    ax.set_ylabel("test ROC-AUC")
    ax.set_title("Learning curve")
    return _png(fig)


def _hist(values: list[float], title: str, unit: str = "ms") -> str | None:
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.hist(values, bins=min(30, max(5, len(values) // 5)))
    ax.set_xlabel(unit)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _png(fig)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}"  # metrics to 3 places; times and sizes to 1
    return str(v)


def _confusion(cm: dict[str, Any] | None) -> str:
    if not cm:
        return ""
    tp, fp, fn, tn = (cm.get(k, 0) for k in ("tp", "fp", "fn", "tn"))
    return (
        "<table class='cm'><tr><th></th><th>predicted pneumonia</th><th>predicted normal</th></tr>"
        f"<tr><th>pneumonia</th><td>{tp}</td><td>{fn}</td></tr>"
        f"<tr><th>normal</th><td>{fp}</td><td>{tn}</td></tr></table>"
    )


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    s = sorted(values)
    return {
        "count": len(s),
        "p50": s[len(s) // 2],
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
        "max": s[-1],
    }


def _triple(v: Any, signed: bool = False) -> str:
    if not v:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v[0])} (95% CI {f.format(v[1])} to {f.format(v[2])})"


def _target_line(q: Any) -> str:
    """The final champion against the demo's quality target (figures.quality_target)."""
    if not isinstance(q, dict) or not q:
        return ""
    t = q.get("target") or {}
    want = (f"AUC &ge; {t.get('auc')}, sensitivity &ge; {t.get('sensitivity')} and specificity &ge; "
            f"{t.get('specificity')} at the operating threshold, on the locked set")
    if q.get("version") is None:
        return f"<p class='bad'>Quality target ({want}): no champion.</p>"
    best = q.get("best_specificity_at_target_sensitivity")
    return (f"<p class='{'ok' if q.get('met') else 'bad'}'>Quality target ({want}): champion v{q.get('version')} has "
            f"AUC {_fmt(q.get('auc'))}, sensitivity {_fmt(q.get('sensitivity'))}, specificity "
            f"{_fmt(q.get('specificity'))} ({html.escape(str(q.get('reason')))}); its locked-set ROC offers "
            f"specificity {_fmt(best)} at sensitivity &ge; {t.get('sensitivity')} with a threshold chosen on these "
            "cases, which the policy does not allow.</p>")


def _locked_section(locked: Any, models: list[dict[str, Any]], policy: Any) -> str:
    """The locked evaluation set: its size, each version's AUC with its 95% CI on it, and the paired difference."""
    if not locked:
        return "<h3>Locked evaluation set</h3><p>No version carries locked-set evidence.</p>"
    rows = "".join(
        f"<tr><td>v{html.escape(str(m.get('version')))}</td><td>{html.escape(str(m.get('status')))}</td>"
        f"<td>{(m.get('locked_set') or {}).get('version', '–')}</td><td>{_triple(m.get('auc_ci'))}</td>"
        f"<td>{_triple(m.get('champion_auc_ci'))}</td><td>{_triple(m.get('paired_diff_ci'), signed=True)}</td>"
        f"<td>{html.escape(str(m.get('specificity_ci') or '–'))}</td></tr>" for m in models)
    pol = ""
    if isinstance(policy, dict) and policy:
        pol = ("<p>Approval policy <code>" + html.escape(str(policy.get("name"))) + "</code>: " +
               html.escape(", ".join(f"{k} {v}" for k, v in policy.items() if k != "name")) + ".</p>")
    return ("<h3 id='locked-set'>Locked evaluation set</h3>"
            f"<p>Version {html.escape(str(locked.get('version')))} "
            f"(sha256 <code>{html.escape(str(locked.get('sha256')))[:16]}…</code>): "
            f"{locked.get('n')} cases, {locked.get('positives')} positive, {locked.get('negatives')} negative, from "
            "held-out patients no training run saw. Every version and the champion are scored on it (DeLong 95% "
            "intervals).</p>" + pol +
            "<table><tr><th>version</th><th>status</th><th>locked set</th><th>AUC</th><th>champion's AUC, same cases"
            "</th><th>paired difference</th><th>specificity 95% CI</th></tr>" + rows + "</table>")


def write_report(out_dir: Path, figures: dict[str, Any]) -> Path:
    """Write ``index.html`` and ``report.json`` under ``out_dir``; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lat = figures.get("latency", {})
    figures.setdefault("latency_summary", {k: _stats(v) for k, v in lat.items()})
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2, default=str))

    models = figures.get("models", [])
    parts: list[str] = []
    ws = figures.get("workstation")
    if ws:
        parts.append("<h2 id='workstation'>Radiologist's workstation</h2>")
        note = ("the platform is still running (<code>--keep-running</code>)" if ws.get("live") else
                "live while the platform runs: <code>radloop demo --keep-running</code> or <code>radloop up</code>")
        parts.append(f"<p><a href='{html.escape(ws['worklist_url'])}'>The AI-ordered worklist</a> "
                     f"(<a href='{html.escape(ws['signin_url'])}'>sign in</a> with the local development sign-in: "
                     f"choose the radiologist, ml or admin role); {note}.</p>")
    parts.append("<h2 id='models'>Models</h2>")
    if models:
        parts.append(_table(models, ["version", "status", "auc", "sensitivity", "specificity", "labels", "run_id",
                                     "parent", "champion"]))
        parts.append(_locked_section(figures.get("locked_set"), models, figures.get("policy"))
                     + _target_line(figures.get("quality_target")))
        roc = _roc_chart(models)
        if roc:
            parts.append(f"<img alt='ROC curves' src='{roc}'>")
        lc = _learning_chart(figures.get("learning_curve", []))
        if lc:
            parts.append(f"<img alt='learning curve' src='{lc}'>")
        for m in models:
            if m.get("confusion_matrix"):
                parts.append(f"<h4>v{m['version']} confusion matrix (threshold {_fmt(m.get('threshold'))})</h4>")
                parts.append(_confusion(m["confusion_matrix"]))
    else:
        parts.append("<p>No model was registered.</p>")

    parts.append("<h2 id='decisions'>Approvals and rejections</h2>")
    parts.append(_table(figures.get("decisions", []), ["version", "decision", "by", "reason", "at"]))
    parts.append("<h3>Training runs</h3>")
    parts.append(_table(figures.get("runs", []), ["run_id", "status", "trigger", "labels", "duration_s",
                                                  "failure_reason"]))

    parts.append("<h2 id='latency'>Latency</h2>")
    parts.append(_table([{"path": k, **v} for k, v in figures["latency_summary"].items()],
                        ["path", "count", "p50", "p95", "max"]))
    for key, title in (("ingest_ms", "STOW-RS ingest (per request)"), ("stored_to_scored_ms", "InstanceStored → score"),
                       ("verified_to_training_s", "verified → training start")):
        img = _hist(lat.get(key, []), title, "s" if key.endswith("_s") else "ms")
        if img:
            parts.append(f"<img alt='{html.escape(title)}' src='{img}'>")

    st = figures.get("streaming", {})
    parts.append("<h2 id='streaming'>Streaming</h2>")
    parts.append(_table([st] if st else [], ["frames", "first_image_ms", "full_series_ms", "series_fps",
                                             "bytes_first_image", "bytes_total"]))

    sto = figures.get("storage", {})
    parts.append("<h2 id='storage'>Storage</h2>")
    parts.append(_table([sto] if sto else [], ["instances", "frames", "raw_pixel_bytes", "original_bytes",
                                               "htj2k_bytes", "ratio", "saving_pct"]))

    j = figures.get("journey", {})
    parts.append("<h2 id='journey'>One image's journey</h2>")
    if j:
        parts.append(f"<p>trace <code>{html.escape(str(j.get('trace_id')))}</code> — "
                     f"<code>radloop traces {html.escape(str(j.get('trace_id')))}</code> shows the same tree.</p>")
        parts.append(f"<pre>{html.escape(j.get('tree_text', ''))}</pre>")

    parts.append("<h2 id='heatmaps'>Heatmaps</h2>")
    for h in figures.get("heatmaps", []):
        parts.append(f"<figure><img alt='heatmap' src='{h['data_uri']}' width='256'><figcaption>p = "
                     f"{_fmt(h.get('probability'))}, model v{h.get('model_version')}</figcaption></figure>")
    if not figures.get("heatmaps"):
        parts.append("<p>No heatmap was produced.</p>")

    stages = figures.get("stages", {})
    if stages:
        parts.append("<h3>Where the time went</h3>")
        parts.append(_table([{"stage": k, "seconds": v} for k, v in stages.items()], ["stage", "seconds"]))

    parts.append("<h2 id='environment'>Environment</h2>")
    parts.append(_table([{"key": k, "value": v} for k, v in figures.get("environment", {}).items()], ["key", "value"]))

    summary = figures.get("summary", {})
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>radloop demo report</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2733}} h1{{margin-bottom:.2em}} h2{{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.6em}}
table{{border-collapse:collapse;margin:.6em 0;font-size:.9em}} td,th{{border:1px solid #cfd8e3;padding:.25em .6em;
text-align:left}} th{{background:#f1f5f9}} img{{margin:.4em .8em .4em 0;vertical-align:top}} figure{{display:inline-block;
margin:.4em}} pre{{background:#0f172a;color:#e2e8f0;padding:1em;overflow:auto;font-size:.8em}}
.ok{{color:#15803d}} .bad{{color:#b91c1c}} .kpi{{display:inline-block;margin:.4em 1.4em .4em 0}}
.kpi b{{display:block;font-size:1.6em}}</style></head><body>
<h1>radloop demo report</h1>
<p class="{'ok' if summary.get('loop_succeeded') else 'bad'}">{html.escape(summary.get('headline', ''))}</p>
<div>{''.join(f"<span class='kpi'><b>{html.escape(_fmt(v))}</b>{html.escape(k)}</span>"
              for k, v in summary.get('kpis', {}).items())}</div>
{''.join(parts)}
</body></html>"""
    path = out_dir / "index.html"
    path.write_text(doc)
    return path
