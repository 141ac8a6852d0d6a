"""Trace trees from the local span sink (``radloop traces``, and the demo report's "journey of one image")."""

from __future__ import annotations

from typing import Any

from rich.tree import Tree


def build_trace_trees(spans: list[dict[str, Any]], trace_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Group spans by trace id, each list ordered by start time."""
    traces: dict[str, list[dict[str, Any]]] = {}
    for sp in spans:
        if trace_id and sp["trace_id"] != trace_id:
            continue
        traces.setdefault(sp["trace_id"], []).append(sp)
    return traces


def render_trace(spans: list[dict[str, Any]]) -> Tree:
    """One trace as a tree: each span under its parent, with its offset from the first span and its duration."""
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for sp in spans:
        parent = sp.get("parent_span_id") if sp.get("parent_span_id") in by_id else None
        children.setdefault(parent, []).append(sp)
    t0 = min(s["start_ns"] for s in spans)
    root = Tree(f"trace [bold]{spans[0]['trace_id']}[/] ({len(spans)} spans)")

    def add(node: Tree, sp: dict[str, Any]) -> None:
        dur = ((sp.get("end_ns") or sp["start_ns"]) - sp["start_ns"]) / 1e6
        off = (sp["start_ns"] - t0) / 1e6
        mark = "[red]✗[/] " if sp.get("status") == "ERROR" else ""
        child = node.add(f"{mark}[cyan]{sp.get('service')}[/] {sp['name']} [dim]+{off:.1f} ms, {dur:.1f} ms[/]")
        for c in sorted(children.get(sp["span_id"], []), key=lambda x: x["start_ns"]):
            add(child, c)

    for r in sorted(children.get(None, []), key=lambda x: x["start_ns"]):
        add(root, r)
    return root
