"""The health of a running local platform: each service's readiness and every queue's depth (``radloop status``).

Shared by the CLI and the demo's closing check, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from shared.settings import DEFAULT_PORTS, Settings


def collect_status(s: Settings) -> dict[str, Any]:
    """Health of every service and the depth of every queue and DLQ."""
    from radloop.local.platform import fetch_json, read_state
    from shared.aws import boto3_client

    state = read_state(s.var_dir) or {}
    ports = {**DEFAULT_PORTS, **state.get("ports", {})}
    endpoint = s.aws_endpoint_url or state.get("endpoint", "")
    out: dict[str, Any] = {"endpoint": endpoint or "aws", "prefix": s.prefix, "services": {}, "queues": {}}
    from shared.topology import SERVICES

    replicas = [n for n in state.get("pids", {}) if n not in (*SERVICES, "entry") and n in ports]  # streaming_gateway-2
    for name in (*SERVICES, *replicas, "entry"):
        url = f"http://127.0.0.1:{ports[name]}"
        code, body = fetch_json(url + ("/readyz" if name != "entry" else "/healthz"))
        out["services"][name] = {
            "url": url,
            "healthy": code == 200,
            "status": code,
            "detail": body if code != 200 else None,
            "pid": state.get("pids", {}).get(name),
        }
    out["dimse_port"] = ports["dimse"]
    out["dimse_ae_title"] = "RADLOOP"
    out["qr_port"] = ports["qr"]  # the interop service's Query/Retrieve SCP, AE title RADLOOP_QR
    try:
        sqs = boto3_client(s.model_copy(update={"aws_endpoint_url": endpoint}), "sqs")
        for service, q in s.topology.queues.items():
            depths = {}
            for label, qname in (("queue", q.name), ("dlq", q.dlq_name)):
                url = sqs.get_queue_url(QueueName=qname)["QueueUrl"]
                a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
                depths[label] = int(a["ApproximateNumberOfMessages"])
                depths[f"{label}_in_flight"] = int(a["ApproximateNumberOfMessagesNotVisible"])
            out["queues"][service] = depths
    except Exception as exc:
        out["queues_error"] = f"{type(exc).__name__}: {exc}"
    recorded_prefix = state.get("prefix")
    if recorded_prefix and recorded_prefix != s.prefix:
        # Another deployment's tables are not this one's: not "the data is gone" (what it said; found by a review).
        out["aws_state"] = {"data_lost": None, "message": (
            f"RADLOOP_PREFIX is {s.prefix!r} but the platform running here (var/run/state.json) uses "
            f"{recorded_prefix!r}: set RADLOOP_PREFIX={recorded_prefix} to see it")}
        out["prefix_mismatch"] = True
    elif endpoint:
        # moto keeps everything in memory: a restart loses every stored image, case and message (shared.bootstrap).
        from shared.bootstrap import endpoint_state

        out["aws_state"] = endpoint_state(s.model_copy(update={"aws_endpoint_url": endpoint}), state.get("boot_id"))
        if state.get("aws_data_lost"):
            out["aws_state"]["losses"] = state["aws_data_lost"]
            out["aws_state"]["data_lost"] = True
    lost = bool(out.get("aws_state", {}).get("data_lost"))
    out["healthy"] = (all(v["healthy"] for v in out["services"].values()) and "queues_error" not in out
                      and not lost and not out.get("prefix_mismatch"))
    return out


#: What ``radloop status --url`` asks a deployment's entry point: one cheap authenticated request per routed service,
#: as (service, method, path, the statuses that mean it answered). Ingestion's route is STOW (a POST): a body that is
#: not multipart is refused by ingestion itself (415; 403 for a token that may not store) and stores nothing, while
#: a proxy whose upstream is down answers 502. (It was not probed, so a dead ingestion looked healthy: a review.)
REMOTE_PROBES: tuple[tuple[str, str, str, frozenset[int]], ...] = (
    ("entry", "GET", "/healthz", frozenset({200})),
    ("ingestion", "POST", "/dicomweb/studies", frozenset({403, 415})),
    ("streaming_gateway", "GET", "/dicomweb/studies?limit=1", frozenset({200})),
    ("verification", "GET", "/verification/worklist?limit=1", frozenset({200})),
    ("registry", "GET", "/registry/models", frozenset({200})),
    ("pipeline_orchestrator", "GET", "/orchestrator/trainings", frozenset({200})),
)


def collect_remote_status(url: str, token: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Health of a deployment seen through its entry point (``radloop status --url``): each routed service answers
    one authenticated read. Queue depths need SQS access: ``radloop dlq list`` gives them."""
    import httpx

    out: dict[str, Any] = {"url": url, "services": {}}
    with httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}",
                                                    "Accept": "application/json, application/dicom+json"}) as http:
        for name, method, path, answered in REMOTE_PROBES:
            try:
                r = http.request(method, url + path, content=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"} if method == "POST" else None)
                code = r.status_code
                detail = None if code in answered else r.text[:200]
            except httpx.HTTPError as exc:
                code, detail = 0, f"{type(exc).__name__}: {exc}"
            out["services"][name] = {"url": url + path.split("?")[0], "healthy": code in answered, "status": code,
                                     "detail": detail}
    out["healthy"] = all(v["healthy"] for v in out["services"].values())
    return out
