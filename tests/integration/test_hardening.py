"""MemoryDenyWriteExecute= does not break the service: the CLI and the HTTPS sandbox (TLS on both ends, msal,
SQLite, pydantic) pass their tests in a process the kernel refuses writable-executable memory (PR_SET_MDWE,
what the unit's MemoryDenyWriteExecute=yes asks for; children inherit it)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)                                   # the kernel has no MDWE (Linux < 6.3)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit(78)                                   # not in force: this test would prove nothing
    except OSError:
        pass
    import pytest
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
""")


def test_the_service_code_runs_with_memory_deny_write_execute():
    result = subprocess.run([sys.executable, "-c", PROBE, "tests/integration/test_sandbox_cli.py",
                             "tests/unit/test_cli.py", "tests/unit/test_m365_auth.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert result.returncode != 78, "a writable-executable mapping was allowed: MDWE not in force"
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
