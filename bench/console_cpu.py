"""The server CPU time one console refresh costs: `flintlm serve` (embedded model, idle engine)
is polled on /console/api/live and /admin/usage as fast as one client can, and the server
process's CPU time (/proc/<pid>/stat: user + system, every thread) over those calls, less its
idle rate over the same wall time, is divided by the calls. CPU time, not wall time, so another
program on the machine inflates it little (unlike the throughput benchmark's paired runs).

    PYTHONPATH=. .venv/bin/python bench/console_cpu.py --out bench/results/console-cpu.json

The console's share of one core follows: live every 1.5 s, usage every 5 s (the pages' rates).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from flintlm.bench.peers import FlintlmServer
from flintlm.bench.workload import resolve_gguf

LIVE_REFRESH_S = 1.5  # console/static/pages/live.js
USAGE_REFRESH_S = 5.0  # bench/console_overhead.py's usage tab
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime


def server_ms_per_call(pid: int, client: httpx.Client, path: str, params: dict[str, str],
                       calls: int, idle_cpu_per_s: float) -> float:
    started_cpu, started = cpu_seconds(pid), time.monotonic()
    for _ in range(calls):
        client.get(path, params=params).raise_for_status()
    elapsed = time.monotonic() - started
    busy = cpu_seconds(pid) - started_cpu - idle_cpu_per_s * elapsed
    return 1000 * busy / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/console-cpu.json"))
    args = parser.parse_args()

    admin_key = secrets.token_urlsafe(24)
    today = datetime.now(UTC).date()
    usage_query = {"start": today.replace(day=1).isoformat(),
                   "end": (today + timedelta(days=1)).isoformat(), "group_by": "day"}
    with tempfile.TemporaryDirectory() as data_dir, FlintlmServer(
            str(resolve_gguf("default")), ["--admin-key", admin_key], Path(data_dir)) as server:
        assert server._process is not None  # started by the with statement
        pid = server._process.pid
        with httpx.Client(base_url=server.base_url, timeout=60.0,
                          headers={"Authorization": f"Bearer {admin_key}"}) as client:
            client.get("/console/api/live").raise_for_status()  # first-call costs out of the way
            client.get("/admin/usage", params=usage_query).raise_for_status()
            idle_from = cpu_seconds(pid)
            time.sleep(args.idle_s)
            idle_cpu_per_s = (cpu_seconds(pid) - idle_from) / args.idle_s
            live_ms = server_ms_per_call(pid, client, "/console/api/live", {}, args.calls,
                                         idle_cpu_per_s)
            usage_ms = server_ms_per_call(pid, client, "/admin/usage", usage_query,
                                          args.calls, idle_cpu_per_s)
    share = (live_ms / LIVE_REFRESH_S + usage_ms / USAGE_REFRESH_S) / 1000
    result = {"live_ms_cpu_per_call": round(live_ms, 3),
              "usage_ms_cpu_per_call": round(usage_ms, 3),
              "idle_cpu_per_s": round(idle_cpu_per_s, 4), "calls": args.calls,
              "open_console_share_of_one_core": round(share, 5)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
