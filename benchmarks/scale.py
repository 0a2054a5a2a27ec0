"""Scale: `python -m benchmarks scale`.

1. A 100,000-person HR feed against a 100,000-user directory: match plus plan, timed in a
   subprocess of its own (`python -m benchmarks.scale N`) so its peak resident memory is its
   alone (the kernel's high-water mark, VmHWM). The directory is the Active Directory provider
   with its paged LDAP reads answered from memory, as in the matching benchmark, each entry
   made as the read is consumed, as a real paged read streams them.
2. A pass with nothing changed costs O(changes): `offboard reconcile --once` against the
   sandbox (BambooHR feed, Entra and Exchange Online) at two company sizes, counting the
   requests each system answered in pass 1 (first full read), pass 2 (nothing changed) and
   pass 3 (ten people terminated in BambooHR since).
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from connector.sandbox.configs import secret_file, toml_table
from connector.sandbox.serving import OFFBOARD
from tests.serving import cloud_only_stayers, sandbox_daemon_setup

from .mass_layoff import limits, refeed
from .matching import in_memory_provider, leavers, raw_entry
from .sections import Section, table
from .soak import status_kib

TITLE = "Scale"
PEOPLE = 100_000
SIZES = (1_000, 10_000)
CHANGES = 10
GOAL_SECONDS, GOAL_MB = 10.0, 500
MIB_TO_MB = 1.048576


def verdict(fast: bool, small: bool) -> str:
    return {(True, True): "both goals met", (True, False): "time goal met, memory goal missed",
            (False, True): "memory goal met, time goal missed", (False, False): "both goals missed"}[fast, small]


def child(n: int) -> dict:
    """Run in the subprocess: the feed built first, the directory's entries made as its paged read is consumed
    (as a real one streams them), then prepare, match and plan of every row timed."""
    people = leavers(n)
    provider = in_memory_provider((raw_entry(i) for i in range(n)))
    fixture = status_kib("self")
    start, cpu = time.perf_counter(), time.process_time()
    provider.prepare(people)
    matched = planned = 0
    for t in people:
        match = provider.match(t)
        matched += match.status == "matched"
        planned += len(provider.plan(match.subject, t))
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "peak_kib": status_kib("self", "VmHWM"),
            "fixture_kib": fixture,
            "matched": matched, "planned": planned}


def bench_match(n: int = PEOPLE) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", str(n)], capture_output=True, text=True,
                          check=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.splitlines()[-1])


def counting(system) -> list[int]:
    """Wrap a sandbox system's `handle` to count the bytes of its answers (a list holding the total)."""
    total, handle = [0], system.handle

    def counted(request):
        response = handle(request)
        total[0] += len(response.body)
        return response

    system.handle = counted
    return total


def counts(world, hr_bytes: list[int]) -> dict:
    cloud = world.cloud
    return {"bamboohr": len(world.bamboohr.calls), "bamboohr_bytes": hr_bytes[0],
            "graph": sum(s in ("graph", "graph-sub") and p != "/$batch" for s, _, p in cloud.calls),
            "exchange": cloud.count("exchange"), "writes": len(world.sandbox.writes.entries(ok=True))}


def bench_passes(size: int) -> list[dict]:
    """Three passes against a company of `size` whose HR feed has nobody leaving, then CHANGES leavers."""
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    with sandbox_daemon_setup(folder, size=size, tenant_extra=limits(size + 1)) as (world, config, env):
        hr = world.bamboohr
        hr.employees.clear()               # everyone employed: pass 1 reads the whole feed and offboards nobody
        people = {p.number: hr.hire(p.number, p.email, p.given, p.surname, p.manager, on=dt.date(2020, 1, 6))
                  for p in world.company.people}
        base = world.cloud.urls["graph"].rsplit("/", 1)[0]
        refeed(config, toml_table("tenant.source", {"type": "bamboohr", "base_url": f"{base}/bamboohr",
                                                    "api_key": secret_file(folder, "bamboohr-key", hr.api_key)}))
        hr_bytes = counting(hr)
        rows, before = [], counts(world, hr_bytes)
        for label in ("pass 1: first full read", "pass 2: nothing changed", f"pass 3: {CHANGES} terminated since"):
            if label.startswith("pass 3"):
                for p in cloud_only_stayers(world)[:CHANGES]:
                    hr.terminate(people[p.number], hr.today - dt.timedelta(days=1))
            t0 = time.perf_counter()
            done = subprocess.run([OFFBOARD, "--config", str(config), "reconcile", "--once"], env=env,
                                  capture_output=True, text=True, timeout=600)
            after = counts(world, hr_bytes)
            rows.append({"label": label, "seconds": time.perf_counter() - t0, "exit": done.returncode,
                         **{k: after[k] - before[k] for k in after}})
            before = after
    return rows


def section() -> Section:
    m = bench_match()
    peak, fixture = m["peak_kib"] / 1024, m["fixture_kib"] / 1024
    rows = [[f"match + plan, {PEOPLE:,} HR rows against {PEOPLE:,} accounts (subprocess)",
             f"{m['seconds']:.2f} s ({m['cpu']:.2f} s of CPU)",
             f"{peak * MIB_TO_MB:.0f} MB peak RSS",
             f"{m['matched']:,} matched, {m['planned']:,} actions planned"]]
    body = table(["measurement", "time (goal < 10 s)", f"memory (goal < {GOAL_MB} MB)", "work"], rows)
    passes = {size: bench_passes(size) for size in SIZES}
    prow = [[f"{size:,} people", r["label"], f"{r['seconds']:.1f} s (exit {r['exit']})", r["bamboohr"],
             f"{r['bamboohr_bytes'] / 1024:,.0f} KiB", r["graph"], r["exchange"], r["writes"]]
            for size, rs in passes.items() for r in rs]
    body += "\n\n" + table(["company", "pass", "wall time", "BambooHR requests", "BambooHR bytes read",
                            "Graph requests", "Exchange requests", "writes"], prow)
    quiet = {size: rs[1] for size, rs in passes.items()}
    changed = {size: rs[2] for size, rs in passes.items()}
    asked = lambda r: r["bamboohr"] + r["graph"] + r["exchange"]
    q = quiet[SIZES[0]]
    body += (f"\n\nMatch and plan: {verdict(m['seconds'] < GOAL_SECONDS, peak * MIB_TO_MB < GOAL_MB)}. The wall "
             "time follows the machine's load (other work shares its 2 cores; the load average is in the stamp "
             f"above); the CPU time, {m['cpu']:.1f} s, is what the work itself costs. Peak "
             f"{peak * MIB_TO_MB:.0f} MB, of which {fixture * MIB_TO_MB:.0f} MB were taken before the clock started "
             "(the interpreter, the code and the 100,000 HR rows); the directory's entries are made as the paged "
             "read consumes them, so their making is inside the time, as a real read's decoding would be. The "
             "provider reads the directory once into an index, then each HR row is a dict look-up and a pure plan. "
             "Profiled (cProfile, 20,000 rows), 40% of match+plan was ldap3 parsing the same DNs again to compare "
             "each account's OU with the disabled OU; a DN is now parsed once (`normal_dn`, cached): 2.57 s -> "
             "2.00 s for those 20,000 under the profiler (the matching section's in-process figure was 16.9 s "
             "for 100,000 before it, under other load).\n\n"
             "Passes: the BambooHR source keeps a cursor (`employees/changed?since=`), so after the first full "
             "read a pass asks only what changed, and with nobody due Entra and Exchange Online are asked only "
             f"what proves their credentials ({q['graph']} Graph, {q['exchange']} Exchange requests). A pass with "
             f"nothing changed costs {', '.join(str(asked(quiet[s])) for s in SIZES)} requests at "
             f"{' and '.join(f'{s:,}' for s in SIZES)} people; one after {CHANGES} terminations costs "
             f"{', '.join(str(asked(changed[s])) for s in SIZES)}: it grows with the changes, not the company. Only "
             "the first full read grows with the company (its bytes).")
    return Section(TITLE, body, f"scale: 100k x 100k match+plan {m['seconds']:.1f} s (goal < {GOAL_SECONDS:.0f}) at "
                                f"{peak * MIB_TO_MB:.0f} MB peak (goal < {GOAL_MB}); a pass with nothing changed "
                                f"{asked(quiet[SIZES[0]])} requests at {SIZES[0]:,} people, "
                                f"{asked(quiet[SIZES[-1]])} at {SIZES[-1]:,}")


if __name__ == "__main__":
    print(json.dumps(child(int(sys.argv[1]))))
