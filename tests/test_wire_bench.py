"""bench/wire_latency.py at a tiny scale: real sipp phones, a real capture, the real services.

Skipped where the bench cannot run without installing anything (no sipp or tshark: the bench
would apt-get them, a test never does) or cannot make its network namespace (not root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "wire_latency.py"


def test_every_sipp_phone_is_answered_and_notified_and_measured(tmp_path: Path) -> None:
    missing = [tool for tool in ("sipp", "tshark", "unshare", "ip", "ss") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the wire bench needs {', '.join(missing)} (the bench installs sipp and tshark; tests do not)")
    if os.geteuid() != 0:
        pytest.skip("the wire bench makes a network namespace: needs root (CI has it)")
    out = tmp_path / "wire.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--phones", "20", "--rates", "100", "--cases", "ready",
         "--no-trace", "--notify-wait", "5", "--max-seconds", "60", "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # the services' case only: the stdlib reference adds seconds and every bench run shows it
    results = {r["case"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"ready"}
    for case, r in results.items():
        # every phone's SUBSCRIBE, answer and NOTIFY came through the capture, and each phone
        # answered its NOTIFY, to the NOTIFY's sender (not to the group sipp calls)
        assert r["booted"] == 20, (case, r)
        assert r["notify_answered"] == 20, (case, r)
        for key in ("subscribe_to_answer", "subscribe_to_notify"):
            assert (r[key]["count"], r[key]["lost"]) == (20, 0), (case, key, r[key])
            assert 0 < r[key]["p50"] <= r[key]["max"], (case, key, r[key])
    assert "| 100/s | ready |" in done.stdout
