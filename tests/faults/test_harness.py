"""The fault harness explains a stall instead of only timing out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveProcess
from tests.faults.harness import Traffic, wait_or_explain


def test_a_stall_names_each_process_state_and_the_end_of_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    log_path.write_text("".join(f"line {i}\n" for i in range(100)) + "consumer: Cannot connect\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    finished = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    finished.wait()
    traffic = Traffic(url="http://127.0.0.1:9", key="k", senders=0)
    traffic.receipts.answers["503"] = 4
    try:
        with pytest.raises(AssertionError) as raised:
            wait_or_explain(
                lambda: False,
                message="the worker consuming again",
                timeout=0.3,
                traffic=traffic,
                processes={
                    "worker": LiveProcess(sleeper, log_path),
                    "api": LiveProcess(finished, tmp_path / "absent.log"),
                    "beat": None,
                },
            )
    finally:
        sleeper.kill()
        sleeper.wait()
    text = str(raised.value)
    assert text.startswith("timed out after 0.3s waiting for the worker consuming again")
    assert "answers so far: {'503': 4}" in text
    assert "--- worker (alive), the end of its log:" in text
    assert "consumer: Cannot connect" in text and "line 99" in text
    assert "line 59\n" not in text  # only the last 40 lines
    assert "--- api (exited 3)" in text
    assert "--- beat: not started" in text
