"""The DICOMweb side-by-side benchmark (bench/dicomweb.py) on a tiny corpus: it runs radloop (nginx entry and the
gateway directly) and Orthanc in one run and writes a JSON with both sides, the ratios and the machine's load.
Checks shape and sanity (every request answered, result counts right, rates and times positive and finite), never
timing thresholds: those belong to the full run (`make bench`) and docs/performance.md."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READ, STOW10, CR = 6, 10, 1


def _finite_positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed (make setup installs it)")
def test_bench_dicomweb_smoke_writes_both_sides_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "dicomweb.json"
    r = subprocess.run([sys.executable, "bench/dicomweb.py", "--quick", "--read", str(READ), "--stow10", str(STOW10),
                        "--cr", str(CR), "--out", str(out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["entry"] == ("nginx" if shutil.which("nginx", path=os.environ["PATH"] + ":/usr/sbin") else
                            "python fallback")
    for side in ("radloop_entry", "orthanc"):
        s = res[side]
        assert s["stow_1_per_request_c16"]["instances"] == READ and s["stow_10_per_request_c4"]["instances"] == STOW10
        for k in ("stow_1_per_request_c16", "stow_10_per_request_c4"):
            assert s[k]["failed_requests"] == 0 and _finite_positive(s[k]["instances_per_s"]), (side, s[k])
        assert _finite_positive(s["stow_ct_cpu_s_per_instance"]), side
    for side in ("radloop_entry", "radloop_gateway", "orthanc"):
        s = res[side]
        # the same answers from both servers: one study for the patient, its two CT series and one CR series
        assert s["qido_studies_by_patient"]["results"] == 1, side
        assert s["qido_series_in_study"]["results"] == 2, side
        assert s["qido_instances_in_series"]["results"] == READ and s["series_metadata"]["results"] == READ, side
        for k in ("qido_studies_by_patient", "qido_series_in_study", "qido_instances_in_series", "series_metadata",
                  "rendered_jpeg_512", "rendered_jpeg_512_repeat"):
            assert _finite_positive(s[k]["ms"]), (side, k)
        f = s["frames_octet"]
        assert 512 * 512 * 2 <= f["bytes_per_frame"] < 512 * 512 * 2 + 4096, (side, f)  # raw pixels plus framing
        assert all(_finite_positive(f[k]) for k in ("frames_per_s_c16", "p99_ms_c16", "series_c8_frames_per_s"))
        assert s["rendered_jpeg_512"]["bytes"] > 1000
    assert res["radloop_entry"]["frames_jphc"]["bytes_per_frame"] < res["radloop_entry"]["frames_octet"][
        "bytes_per_frame"]  # the stored HTJ2K, compressed
    ratios = res["ratios"]
    assert len(ratios) == 22 and all(_finite_positive(v) for v in ratios.values()), ratios
    load = res["load"]
    assert len(load["load_average_before"]) == 3 and 0 < load["machine_busy_share"] <= 1
