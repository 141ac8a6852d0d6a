"""The pipeline definition language as the local executor understands it: validation, parameters, the step graph,
and expressions (``Get``, ``Std:Join``, ``Std:JsonGet``, conditions), resolved as SageMaker resolves them.

Pure: no AWS call and no process; :mod:`training.local_executor` runs what this module validates and resolves.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_STEP_TYPES = ("Processing", "Training", "Condition", "RegisterModel", "Fail")
SUPPORTED_CONDITIONS = ("GreaterThanOrEqualTo", "GreaterThan", "LessThanOrEqualTo", "LessThan", "Equals")
IGNORED_TOP_LEVEL = ("Version", "Metadata", "Parameters", "Steps", "PipelineExperimentConfig", "MlflowConfig")


class UnsupportedConstruct(ValueError):
    """The definition uses something this executor does not implement (named in the message)."""


class StepFailed(RuntimeError):
    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


def now_iso() -> str:
    """Now, as SageMaker writes times (ISO 8601, milliseconds, UTC with Z)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")


def parse_path(path: str) -> list[str | int]:
    """``A.B['x'].C[0]`` -> ['A', 'B', 'x', 'C', 0]."""
    out: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise UnsupportedConstruct(f"property path {path!r} has unsupported syntax at {path[pos:]!r}")
        name, q1, q2, idx = m.groups()
        out.append(name if name is not None else (int(idx) if idx is not None else (q1 if q1 is not None else q2)))
        pos = m.end()
    return out


def walk(obj: Any, tokens: list[str | int], what: str) -> Any:
    """Follow tokens through dicts/lists; a string index into a list selects the item whose *Name field matches."""
    cur = obj
    for t in tokens:
        if isinstance(cur, dict) and t in cur or isinstance(cur, list) and isinstance(t, int) and -len(cur) <= t < len(cur):
            cur = cur[t]
        elif isinstance(cur, list) and isinstance(t, str):
            hits = [x for x in cur if isinstance(x, dict) and t in (x.get("OutputName"), x.get("ChannelName"),
                                                                     x.get("InputName"), x.get("MetricName"))]
            if not hits:
                raise StepFailed(f"{what}: no item named {t!r}")
            cur = hits[0]
        else:
            raise StepFailed(f"{what}: {t!r} not found")
    return cur


def render_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass
class StepRecord:
    name: str
    type: str
    status: str = "Executing"
    started_at: str = field(default_factory=now_iso)
    ended_at: str | None = None
    failure_reason: str | None = None
    log_tail: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    property_files: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "failure_reason": self.failure_reason, "log_tail": self.log_tail,
                "seconds": self.seconds}


class Definition:
    """A validated definition with its parameters bound: anything unsupported is refused here, by name."""

    def __init__(self, definition: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.definition = definition
        self._check_top_level()
        self.params = self._bind_parameters(parameters)
        self.steps = {s["Name"]: s for s in self._all_steps(definition.get("Steps", []))}

    def _check_top_level(self) -> None:
        for k in self.definition:
            if k not in IGNORED_TOP_LEVEL:
                raise UnsupportedConstruct(f"pipeline definition key {k!r} is not supported by the local executor")

    def _all_steps(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for s in steps:
            t = s.get("Type")
            if t not in SUPPORTED_STEP_TYPES:
                raise UnsupportedConstruct(f"step {s.get('Name')!r} has type {t!r}, which the local executor does not "
                                           f"support (supported: {', '.join(SUPPORTED_STEP_TYPES)})")
            out.append(s)
            if t == "Condition":
                out += self._all_steps(s["Arguments"].get("IfSteps", []) + s["Arguments"].get("ElseSteps", []))
        names = [s["Name"] for s in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UnsupportedConstruct(f"step names must be unique; repeated: {sorted(dup)}")
        return out

    def _bind_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        decl = {p["Name"]: p for p in self.definition.get("Parameters", [])}
        unknown = set(given) - set(decl)
        if unknown:
            raise ValueError(f"unknown pipeline parameter(s) {sorted(unknown)}; the definition declares {sorted(decl)}")
        out = {}
        for name, p in decl.items():
            v = given.get(name, p.get("DefaultValue"))
            if v is None:
                raise ValueError(f"pipeline parameter {name!r} has no default and no value was given")
            t = p.get("Type", "String")
            try:
                if t == "Integer":
                    if isinstance(v, float) and not v.is_integer():
                        raise ValueError
                    v = int(v)
                elif t == "Float":
                    v = float(v)
                elif t == "Boolean":
                    v = v if isinstance(v, bool) else str(v).lower() == "true"
                elif t == "String":
                    v = str(v)
                else:
                    raise UnsupportedConstruct(f"parameter type {t!r} of {name!r} is not supported")
            except (TypeError, ValueError) as exc:
                if isinstance(exc, UnsupportedConstruct):
                    raise
                raise ValueError(f"pipeline parameter {name!r} must be of type {t}, got {v!r}") from None
            out[name] = v
        return out

    # -- dependency graph ---------------------------------------------------------------------------------------
    def _refs(self, obj: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(obj, dict):
            g = obj.get("Get")
            if isinstance(g, str) and g.startswith("Steps."):
                found.add(str(parse_path(g)[1]))
            for v in obj.values():
                found |= self._refs(v)
        elif isinstance(obj, list):
            for v in obj:
                found |= self._refs(v)
        return found

    def deps(self, step: dict[str, Any]) -> set[str]:
        d = set(step.get("DependsOn") or [])
        if step["Type"] == "Condition":
            d |= self._refs(step["Arguments"].get("Conditions", []))
        else:
            d |= self._refs(step.get("Arguments", {}))
        d.discard(step["Name"])
        for n in d:
            if n not in self.steps:
                raise UnsupportedConstruct(f"step {step['Name']!r} refers to unknown step {n!r}")
        return d

    def topo(self, steps: list[dict[str, Any]], done: set[str]) -> list[dict[str, Any]]:
        """Kahn's algorithm, stable in definition order; dependencies outside ``steps`` must already be done."""
        names = {s["Name"] for s in steps}
        pending = list(steps)
        out: list[dict[str, Any]] = []
        ready_set = set(done)
        while pending:
            for s in pending:
                ds = self.deps(s)
                outside = ds - names - done
                if outside:
                    # a reference to a step in another branch or not run: SageMaker would reject the definition
                    raise UnsupportedConstruct(f"step {s['Name']!r} depends on {sorted(outside)}, which do not run "
                                               "before it")
                if ds <= ready_set:
                    out.append(s)
                    ready_set.add(s["Name"])
                    pending.remove(s)
                    break
            else:
                raise UnsupportedConstruct(f"dependency cycle among steps {[s['Name'] for s in pending]}")
        return out


class Resolver:
    """Resolves expressions against the parameters, the execution's variables and the steps that succeeded so far
    (``records``, read as it grows)."""

    def __init__(self, params: dict[str, Any], execution_id: str, started_at: str,
                 records: Mapping[str, StepRecord]) -> None:
        self.params = params
        self.execution_id = execution_id
        self.started_at = started_at
        self.records = records

    def resolve(self, obj: Any) -> Any:
        if isinstance(obj, list):
            return [self.resolve(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if len(obj) == 1:
            (k, v), = obj.items()
            if k == "Get":
                return self._get(v)
            if k == "Std:Join":
                vals = self.resolve(v.get("Values", []))
                return str(v.get("On", "")).join(render_value(x) for x in vals)
            if k == "Std:JsonGet":
                return self._json_get(v)
            if k.startswith("Std:"):
                raise UnsupportedConstruct(f"pipeline function {k!r} is not supported by the local executor")
        return {k: self.resolve(v) for k, v in obj.items()}

    def _get(self, ref: str) -> Any:
        if not isinstance(ref, str):
            raise UnsupportedConstruct(f"Get of a non-string reference {ref!r}")
        if ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in self.params:
                raise StepFailed(f"reference to undeclared parameter {name!r}")
            return self.params[name]
        if ref.startswith("Execution."):
            var = ref.split(".", 1)[1]
            values = {"PipelineExecutionId": self.execution_id, "PipelineName": "radloop-local",
                      "PipelineExecutionArn": f"arn:aws:sagemaker:local:000000000000:pipeline/radloop-local/execution/"
                                              f"{self.execution_id}", "StartDateTime": self.started_at,
                      "CurrentDateTime": now_iso()}
            if var not in values:
                raise UnsupportedConstruct(f"execution variable {var!r} is not supported")
            return values[var]
        if ref.startswith("Steps."):
            toks = parse_path(ref)
            step = str(toks[1])
            rec = self.records.get(step)
            if rec is None or rec.status != "Succeeded":
                raise StepFailed(f"{ref} refers to step {step!r}, which has not succeeded")
            if len(toks) >= 4 and toks[2] == "PropertyFiles":
                return ("property_file", step, str(toks[3]))
            return walk(rec.properties, toks[2:], ref)
        raise UnsupportedConstruct(f"Get reference {ref!r} is not supported (Parameters., Execution., Steps. are)")

    def _json_get(self, spec: dict[str, Any]) -> Any:
        pf = spec.get("PropertyFile")
        if "StepName" in spec and "S3Uri" in spec:
            raise UnsupportedConstruct("Std:JsonGet on an S3 URI is not supported; use a PropertyFile")
        ref = self.resolve(pf)
        if not (isinstance(ref, tuple) and ref[0] == "property_file"):
            raise UnsupportedConstruct(f"Std:JsonGet needs a PropertyFile reference, got {pf!r}")
        _, step, name = ref
        files = self.records[step].property_files
        if name not in files:
            raise StepFailed(f"step {step!r} has no property file {name!r}")
        path = spec.get("Path", "")
        return walk(files[name], parse_path(path), f"JsonGet {name}:{path}")

    def condition(self, c: dict[str, Any]) -> bool:
        """Evaluate one condition of a Condition step."""
        t = c.get("Type")
        if t not in SUPPORTED_CONDITIONS:
            raise UnsupportedConstruct(f"condition type {t!r} is not supported (supported: "
                                       f"{', '.join(SUPPORTED_CONDITIONS)})")
        left, right = self.resolve(c.get("LeftValue")), self.resolve(c.get("RightValue"))
        if t == "Equals":
            return bool(left == right or render_value(left) == render_value(right))
        try:
            lf, rf = float(left), float(right)
        except (TypeError, ValueError):
            raise StepFailed(f"condition {t} compares non-numbers {left!r} and {right!r}") from None
        return {"GreaterThanOrEqualTo": lf >= rf, "GreaterThan": lf > rf, "LessThanOrEqualTo": lf <= rf,
                "LessThan": lf < rf}[t]
