"""``radloop config``: the effective settings of one service or of all, secrets redacted; and the settings catalogue
that ``scripts/gen_config_docs.py`` turns into docs/config.md.

Descriptions come from the ``#:`` comment block above each field (or the field's ``description``), read from the
source of the class that declares it, so the reference and the code cannot disagree.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Annotated, Any, get_args

import typer
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from rich.table import Table

from radloop.ops.client import JsonOpt, OpsError, console, print_json, run
from shared.settings import Settings
from shared.topology import SERVICES

#: A field whose name has one of these words holds a secret: its value is never printed.
SECRET_WORDS = frozenset({"key", "keys", "token", "tokens", "password", "passwd", "secret", "secrets", "credentials",
                          "authorization"})
REDACTED = "***redacted***"


def is_secret(name: str) -> bool:
    """Whether a setting holds a secret (signing keys, pseudonym/de-identification keys, tokens, passwords)."""
    parts = set(name.lower().split("_"))
    # A *file* holding a key (a TLS key path) is not itself a secret; its content is.
    return bool(parts & SECRET_WORDS) and not name.endswith(("_file", "_url", "_arn"))


def settings_classes() -> dict[str, type[Settings]]:
    """Each service's settings class (the one subclass of Settings its ``settings.py`` declares)."""
    out: dict[str, type[Settings]] = {}
    for name in SERVICES:
        mod = importlib.import_module(f"services.{name}.settings")
        found = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Settings) and c is not Settings
                 and c.__module__ == mod.__name__]
        if len(found) != 1:
            raise RuntimeError(f"services/{name}/settings.py declares {len(found)} Settings classes, expected one")
        out[name] = found[0]
    return out


@dataclass(frozen=True)
class SettingDoc:
    """One row of the configuration reference."""

    name: str
    env: tuple[str, ...]
    type: str
    default: str
    description: str
    owner: str  # "shared" or the service that declares it
    read_by: tuple[str, ...]
    secret: bool


def _comment_docs(cls: type) -> dict[str, str]:
    """``#:`` comment blocks directly above each annotated field of ``cls`` (its own source only)."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    tree = ast.parse(src)
    out: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            block: list[str] = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                block.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if block:
                out[node.target.id] = " ".join(block)
    return out


def _env_names(name: str, info: FieldInfo, cls: type[Settings]) -> tuple[str, ...]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(c) for c in alias.choices)
    if isinstance(alias, str):
        return (alias,)
    prefix = cls.model_config.get("env_prefix", "")
    return (f"{prefix}{name}".upper(),)


def _type_name(annotation: Any) -> str:
    s = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    s = re.sub(r"\b(typing|pathlib|collections\.abc)\.", "", s)
    if get_args(annotation) and isinstance(annotation, type):
        s = repr(annotation)
    return s.replace("NoneType", "None")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "(required)"
    d = info.get_default(call_default_factory=True)
    return repr(str(d) if hasattr(d, "__fspath__") else d)


def catalogue() -> list[SettingDoc]:
    """Every setting of shared.settings.Settings and of each service's class, with where it is declared and read."""
    classes = settings_classes()
    docs: dict[type, dict[str, str]] = {}

    def describe(field: str, info: FieldInfo, cls: type[Settings]) -> tuple[str, type]:
        for klass in cls.__mro__:  # the class that declares the field holds its comment
            if isinstance(klass, type) and issubclass(klass, Settings) and field in klass.__dict__.get("__annotations__", {}):
                if klass not in docs:
                    docs[klass] = _comment_docs(klass)
                return (info.description or docs[klass].get(field, "")), klass
        return info.description or "", cls

    rows: dict[str, SettingDoc] = {}
    for field, info in Settings.model_fields.items():
        desc, _ = describe(field, info, Settings)
        rows[field] = SettingDoc(field, _env_names(field, info, Settings), _type_name(info.annotation), _default(info),
                                 desc, "shared", ("every service",), is_secret(field))
    for service, cls in classes.items():
        for field, info in cls.model_fields.items():
            if field in Settings.model_fields and field not in cls.__dict__.get("__annotations__", {}):
                continue
            desc, _ = describe(field, info, cls)
            prev = rows.get(field)
            read_by = (*prev.read_by, service) if prev and prev.owner != "shared" else (service,)
            rows[field] = SettingDoc(field, _env_names(field, info, cls), _type_name(info.annotation), _default(info),
                                     desc, service if not prev or prev.owner == "shared" else prev.owner, read_by,
                                     is_secret(field))
    return sorted(rows.values(), key=lambda r: (r.owner != "shared", r.owner, r.name))


def effective(service: str | None, endpoint: str | None = None) -> dict[str, dict[str, Any]]:
    """The settings each service would run with in this environment (secrets redacted), keyed by service."""
    classes = settings_classes()
    if service is not None and service not in classes:
        raise OpsError(f"unknown service {service!r}; expected one of {', '.join(classes)}", 2)
    overrides = {"aws_endpoint_url": endpoint} if endpoint else {}
    out: dict[str, dict[str, Any]] = {}
    for name, cls in classes.items():
        if service is not None and name != service:
            continue
        try:
            s = cls(**overrides)
        except ValueError as exc:
            raise OpsError(f"the settings of {name} do not load: {exc}", 2) from None
        out[name] = {k: _redacted(k, v) for k, v in sorted(s.model_dump(mode="json").items())}
    return out


def _redacted(name: str, value: Any) -> Any:
    """``value`` with every secret in it redacted, nested ones too: an interop destination's ``authorization`` is a
    field of a list of objects (it was printed in clear; found by a review)."""
    if is_secret(name) and value not in ("", None):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redacted(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(name, v) if isinstance(v, (dict, list)) else v for v in value]
    return value


#: ``config``'s own option: the AWS endpoint the settings point at (not a deployment's entry point, ``--url``).
EndpointOpt = Annotated[str | None, typer.Option(
    "--aws-endpoint", envvar="AWS_ENDPOINT_URL", show_default=False,
    help="The AWS endpoint the settings point at (default: AWS_ENDPOINT_URL, or AWS itself).")]


def config(
    service: Annotated[str | None, typer.Argument(help=f"One service ({', '.join(SERVICES)}); default all.")] = None,
    endpoint: EndpointOpt = None, as_json: JsonOpt = False,
) -> None:
    """The effective settings (from RADLOOP_* variables and defaults) of a service or of all; secrets redacted,
    nested ones too (an interop destination's authorization).

    Settings are per process, not served over HTTP: this reads this shell's environment, as a service started here
    would. docs/config.md describes every setting.
    """
    def go() -> None:
        eff = effective(service, endpoint)
        if as_json:
            print_json(eff)
            return
        for name, values in eff.items():
            t = Table(title=f"{name} settings")
            t.add_column("setting")
            t.add_column("value")
            for k, v in values.items():
                t.add_row(k, str(v))
            console.print(t)
    run(go)
