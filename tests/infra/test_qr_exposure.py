"""The DIMSE Query/Retrieve SCP in AWS: off by default; with ``-c qr_calling_aes=...`` the interop task runs it behind
the NLB's second DICOM TLS listener, which admits the workstations' network only, and may C-MOVE to the listed
destinations only (docs/interop.md, docs/deploy.md)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from infra.radloop_infra.compute import QR_PORT, QR_TLS_PORT
from infra.radloop_infra.config import params_from_context
from shared.settings import DEFAULT_PORTS
from tests.infra.conftest import ENVS, IDP_CONTEXT, PACS_CIDRS, QR_CONTEXT, Synth


def _interop_app(s: Synth) -> dict[str, Any]:
    for td in s.of_type("AWS::ECS::TaskDefinition").values():
        app = next(c for c in td["Properties"]["ContainerDefinitions"] if c["Name"] == "app")
        if {"Name": "RADLOOP_SERVICE_NAME", "Value": "interop"} in app["Environment"]:
            return app
    raise AssertionError("no interop task")


def _listeners(s: Synth) -> dict[int, dict[str, Any]]:
    return {v["Properties"]["Port"]: v["Properties"] for v in s.of_type("AWS::ElasticLoadBalancingV2::Listener").values()}


def _sg_rules(s: Synth, rtype: str) -> list[dict[str, Any]]:
    rules = [v["Properties"] for v in s.of_type(rtype).values()]
    kind = "SecurityGroupIngress" if rtype.endswith("Ingress") else "SecurityGroupEgress"
    for g in s.of_type("AWS::EC2::SecurityGroup").values():
        rules.extend(g["Properties"].get(kind, []))
    return rules


@pytest.mark.parametrize("env", ENVS)
def test_the_qr_scp_is_not_exposed_by_default(synth: dict[str, Synth], env: str) -> None:
    s = synth[env]
    assert QR_TLS_PORT not in _listeners(s)
    app = _interop_app(s)
    assert "RADLOOP_QR_PORT" not in {e["Name"] for e in app["Environment"]}
    assert [p["ContainerPort"] for p in app["PortMappings"]] == [DEFAULT_PORTS["interop"]]


def test_exposed_qr_scp_has_its_own_tls_listener_network_and_move_destinations(
        synth_healthimaging: Synth, monkeypatch: pytest.MonkeyPatch) -> None:
    s = synth_healthimaging
    listener = _listeners(s)[QR_TLS_PORT]
    assert listener["Protocol"] == "TLS" and listener["Certificates"] and listener["SslPolicy"]
    (tg,) = [v["Properties"] for v in s.of_type("AWS::ElasticLoadBalancingV2::TargetGroup").values()
             if v["Properties"].get("Port") == QR_PORT]
    assert tg["Protocol"] == "TCP" and tg["TargetType"] == "ip"

    app = _interop_app(s)
    values = {e["Name"]: e["Value"] for e in app["Environment"]}
    assert values["RADLOOP_QR_PORT"] == str(QR_PORT) and values["RADLOOP_QR_HOST"] == "0.0.0.0"
    assert json.loads(values["RADLOOP_QR_ALLOWED_CALLING_AES"]) == ["WS_READ1", "WS_READ2"]
    assert json.loads(values["RADLOOP_QR_MOVE_DESTINATIONS"]) == {
        "WS_READ1": {"host": "10.88.0.5", "port": 11112, "tls": True}}
    assert sorted(p["ContainerPort"] for p in app["PortMappings"]) == sorted([DEFAULT_PORTS["interop"], QR_PORT])
    # the interop service would start with these values in prod (a wildcard or malformed map would stop it)
    from services.interop.settings import InteropSettings
    from tests.infra.conftest import resolved

    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.startswith("RADLOOP_")]:
            m.delenv(k)
        for k, v in values.items():
            m.setenv(k, resolved(k, v))
        m.setenv("RADLOOP_PSEUDONYM_KEY", "x" * 64)
        settings = InteropSettings()
    assert settings.qr_port == QR_PORT and settings.qr_move_destinations["WS_READ1"].tls is True

    ingress = _sg_rules(s, "AWS::EC2::SecurityGroupIngress")
    to_listener = [r for r in ingress if r.get("FromPort") == QR_TLS_PORT]
    assert [r.get("CidrIp") for r in to_listener] == ["10.88.0.0/24"], "only the workstations' network"
    assert not [r for r in ingress if r.get("FromPort") == QR_TLS_PORT and r.get("CidrIp") in PACS_CIDRS.split(",")]
    assert [r for r in ingress if r.get("FromPort") == QR_PORT and "SourceSecurityGroupId" in r], "NLB -> task"
    egress = _sg_rules(s, "AWS::EC2::SecurityGroupEgress")
    assert [r for r in egress if r.get("CidrIp") == "10.88.0.5/32" and r.get("FromPort") == 11112]


def _params(**qr: object) -> Any:
    ctx = {"env": "prod", **IDP_CONTEXT, "pacs_cidrs": PACS_CIDRS, **qr}
    return params_from_context(ctx.get)


def test_qr_parameters_are_checked_before_synthesis() -> None:
    p = _params(**QR_CONTEXT)
    assert p.qr and p.qr_calling_aes == ("WS_READ1", "WS_READ2") and p.qr_cidrs == ("10.88.0.0/24",)
    assert p.qr_move_destinations == (("WS_READ1", "10.88.0.5", 11112, True),)
    assert not _params().qr
    with pytest.raises(ValueError, match="wildcard"):
        _params(qr_calling_aes="*", qr_cidrs="10.88.0.0/24")
    with pytest.raises(ValueError, match="qr_cidrs is required"):
        _params(qr_calling_aes="WS1")
    with pytest.raises(ValueError, match="qr_cidrs: 0.0.0.0/0 admits far more"):
        _params(qr_calling_aes="WS1", qr_cidrs="0.0.0.0/0")
    with pytest.raises(ValueError, match="need qr_calling_aes"):
        _params(qr_cidrs="10.88.0.0/24")
    with pytest.raises(ValueError, match=r"qr_move_destinations\['WS1'\] needs an IP address"):
        _params(qr_calling_aes="WS1", qr_cidrs="10.88.0.0/24",
                qr_move_destinations=json.dumps({"WS1": {"host": "ws1.hospital.org", "port": 104}}))
    with pytest.raises(ValueError, match="tls must be true or false"):
        _params(qr_calling_aes="WS1", qr_cidrs="10.88.0.0/24",
                qr_move_destinations=json.dumps({"WS1": {"host": "10.88.0.5", "port": 104, "tls": "false"}}))
    with pytest.raises(ValueError, match="needs an IP address"):
        _params(qr_calling_aes="WS1", qr_cidrs="10.88.0.0/24", qr_move_destinations=json.dumps({"WS1": "10.88.0.5"}))
    with pytest.raises(ValueError, match="not JSON"):
        _params(qr_calling_aes="WS1", qr_cidrs="10.88.0.0/24", qr_move_destinations="{WS1")
