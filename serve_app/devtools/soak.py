"""`recserve soak`: steady real-photo load for a long time, with every Recognizer replica's memory
and the success ratio sampled; it fails when the service lost requests or a replica's memory grew.

Open loop at a fraction of the capacity the operator states (`recserve capacity` measures it),
against a running service on 127.0.0.1 only, bounded in time, in requests and in requests in
flight. Replicas are found through Ray's state API (actor name and PID of each ServeReplica), their
RSS read from /proc (the service runs on this host). Writes soak.json (settings, totals, failures
by reason, per-replica growth, verdict), rss.csv, traffic.csv and soak.png to the output folder;
exits 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from serve_app.devtools.loadgen import photos_jpeg

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_SUCCESS = 0.999
MAX_RSS_GROWTH = 0.10
REQUEST_TIMEOUT_S = 30.0
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in `30m`, `90s`, `1h` or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"duration {text!r}: write it like 30m, 90s, 1h or 600")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class RssSample:
    """One replica's resident memory at one moment of the run."""

    t_s: float
    replica: str
    pid: int
    rss_bytes: int


@dataclass(frozen=True)
class ReplicaGrowth:
    """How one replica's RSS moved: median of its first window after warm-up against its last."""

    replica: str
    pid: int
    first_bytes: float
    last_bytes: float
    samples: int

    @property
    def growth(self) -> float:
        """Relative growth, last over first minus one."""
        return self.last_bytes / self.first_bytes - 1.0 if self.first_bytes else 0.0


def replica_growth(
    samples: list[RssSample], warmup_s: float, window_fraction: float = 0.1
) -> list[ReplicaGrowth]:
    """Per replica (a restarted one, new PID, counts apart), RSS growth after `warmup_s` (pure).

    Each end is the median of the samples in the first and last `window_fraction` of the
    replica's span after warm-up (at least one sample each), so a single sample at a GC peak does
    not decide.
    """
    by_replica: dict[tuple[str, int], list[RssSample]] = {}
    for sample in samples:
        if sample.t_s >= warmup_s:
            by_replica.setdefault((sample.replica, sample.pid), []).append(sample)
    out = []
    for (replica, pid), series in sorted(by_replica.items()):
        if len(series) < 2:
            continue
        series.sort(key=lambda s: s.t_s)
        n = max(1, int(len(series) * window_fraction))
        first = statistics.median(s.rss_bytes for s in series[:n])
        last = statistics.median(s.rss_bytes for s in series[-n:])
        out.append(ReplicaGrowth(replica, pid, first, last, len(series)))
    return out


def verdict(
    ok: int,
    total: int,
    growth: list[ReplicaGrowth],
    min_success: float = MIN_SUCCESS,
    max_growth: float = MAX_RSS_GROWTH,
) -> tuple[bool, list[str]]:
    """Pass or fail, and the reasons of a failure (pure)."""
    reasons = []
    if total == 0:
        reasons.append("no request was sent")
    elif ok / total < min_success:
        reasons.append(
            f"success {ok}/{total} = {ok / total:.4%} is under {min_success:.1%} "
            f"({total - ok} failed)"
        )
    if not growth:
        reasons.append("no replica was sampled twice after the warm-up: RSS not checked")
    for g in growth:
        if g.growth >= max_growth:
            reasons.append(
                f"{g.replica} (PID {g.pid}) RSS grew {g.growth:.1%} "
                f"({g.first_bytes / 2**20:.0f} -> {g.last_bytes / 2**20:.0f} MiB), "
                f"the limit is {max_growth:.0%}"
            )
    return not reasons, reasons


# ---- I/O: replicas, load, files -----------------------------------------------------------------


def replica_pids(dashboard: str) -> dict[str, int]:
    """Actor name -> PID of every live Serve replica, from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=dashboard, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000
    )
    return {
        actor.name: int(actor.pid)
        for actor in actors
        if (actor.class_name or "").startswith("ServeReplica:") and actor.pid
    }


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a local process, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Traffic:
    """Requests of one sampling interval: sent, answered 200, failed (other status, error,
    timeout, or not sent because too many were in flight), and the failures by reason."""

    t_s: float
    sent: int = 0
    ok: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        """Count one failed request and its reason (`failure_reason`)."""
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


NOT_SENT = "not sent: max in flight"


def failure_reason(status: int | None = None, error: BaseException | None = None) -> str:
    """What a failure is filed under: the HTTP status, `timeout`, or the client error's type."""
    if status is not None:
        return str(status)
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    return type(error).__name__ if error is not None else "unknown"


async def run_soak(args: argparse.Namespace, out: Path) -> tuple[list[RssSample], list[Traffic]]:
    """Send the load and sample replicas until the duration ends; return the samples."""
    import aiohttp

    url = f"{args.url.rstrip('/')}/v1/models/{args.model}/predict"
    photos = photos_jpeg()
    rate = args.fraction * args.capacity_rps
    total_requests = int(rate * args.duration_s)
    rss: list[RssSample] = []
    traffic: list[Traffic] = [Traffic(0.0)]
    in_flight = 0
    start = time.monotonic()

    async def one(session: aiohttp.ClientSession, body: bytes) -> None:
        nonlocal in_flight
        bucket = traffic[-1]
        bucket.sent += 1
        in_flight += 1
        try:
            headers = {"Content-Type": "image/jpeg"}
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    bucket.ok += 1
                else:
                    bucket.fail(failure_reason(response.status))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            bucket.fail(failure_reason(error=exc))
        finally:
            in_flight -= 1

    async def sampler() -> None:
        while True:
            t_s = time.monotonic() - start
            try:
                pids = await asyncio.to_thread(replica_pids, args.dashboard)
            except Exception as exc:  # the state API is a dependency: note it, keep the load going
                print(f"soak: t={t_s:.0f} s: replicas not listed ({exc})", file=sys.stderr)
                pids = {}
            for replica, pid in pids.items():
                value = rss_bytes(pid)
                if value is not None:
                    rss.append(RssSample(round(t_s, 1), replica, pid, value))
            if len(traffic) > 1:  # the interval that just ended
                done = traffic[-2]
                print(
                    f"soak: t={t_s:.0f} s, {len(pids)} replicas, last interval "
                    f"{done.ok}/{done.sent} ok, {in_flight} in flight",
                    flush=True,
                )
            await asyncio.sleep(args.sample_s)
            traffic.append(Traffic(round(time.monotonic() - start, 1)))

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=args.max_in_flight)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        sampling = asyncio.create_task(sampler())
        tasks = set()
        for i in range(total_requests):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            if in_flight >= args.max_in_flight:
                traffic[-1].sent += 1
                traffic[-1].fail(NOT_SENT)  # the service fell behind: a lost request
                continue
            task = asyncio.create_task(one(session, photos[i % len(photos)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        sampling.cancel()
    return rss, traffic


def write_results(
    out: Path, settings: dict, rss: list[RssSample], traffic: list[Traffic], warmup_s: float
) -> dict:
    """soak.json, rss.csv, traffic.csv and soak.png in `out`; the summary written to soak.json."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rss.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "replica", "pid", "rss_bytes"])
        writer.writerows([s.t_s, s.replica, s.pid, s.rss_bytes] for s in rss)
    with (out / "traffic.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "sent", "ok", "failed", "reasons"])
        writer.writerows(
            [t.t_s, t.sent, t.ok, t.failed, json.dumps(t.reasons, sort_keys=True)] for t in traffic
        )
    by_reason: dict[str, int] = {}
    for t in traffic:
        for reason, n in t.reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    ok = sum(t.ok for t in traffic)
    total = sum(t.sent for t in traffic)
    growth = replica_growth(rss, warmup_s)
    passed, reasons = verdict(ok, total, growth)
    summary = {
        "settings": settings,
        "requests": total,
        "ok": ok,
        "success_ratio": ok / total if total else None,
        "failures_by_reason": dict(sorted(by_reason.items())),
        "replicas": [{**asdict(g), "growth": round(g.growth, 4)} for g in growth],
        "limits": {"min_success": MIN_SUCCESS, "max_rss_growth": MAX_RSS_GROWTH},
        "passed": passed,
        "reasons": reasons,
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out / "soak.png", rss, traffic, warmup_s)
    return summary


def plot(path: Path, rss: list[RssSample], traffic: list[Traffic], warmup_s: float) -> None:
    """RSS per replica over time above, the success ratio of each interval below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key in sorted({(s.replica, s.pid) for s in rss}):
        series = [s for s in rss if (s.replica, s.pid) == key]
        label = f"{key[0].split('#')[-2] if '#' in key[0] else key[0]} (PID {key[1]})"
        top.plot([s.t_s / 60 for s in series], [s.rss_bytes / 2**20 for s in series], label=label)
    top.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    top.set_ylabel("RSS (MiB)")
    top.set_title("Replica memory")
    top.legend(fontsize="small")
    sent = [t for t in traffic if t.sent]
    bottom.plot([t.t_s / 60 for t in sent], [t.ok / t.sent for t in sent], marker=".")
    bottom.axhline(MIN_SUCCESS, color="red", linestyle="--", label=f"{MIN_SUCCESS:.1%}")
    bottom.set_ylabel("success ratio per interval")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The `recserve soak` argument parser."""
    parser = argparse.ArgumentParser(prog="recserve soak", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--duration", default="30m", help="how long (30m, 90s, 1h)")
    parser.add_argument(
        "--capacity-rps",
        type=float,
        required=True,
        help="what the model's replicas sustain together (`recserve capacity` x replicas)",
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="of capacity (default 0.5)")
    parser.add_argument("--sample-s", type=float, default=15.0, help="RSS and traffic interval")
    parser.add_argument("--warmup", default="2m", help="RSS before this is not judged (default 2m)")
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="more in flight count as lost requests"
    )
    parser.add_argument(
        "--dashboard", default="http://127.0.0.1:8265", help="Ray dashboard (state API)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve soak`: run, write the results, exit 1 when the verdict fails."""
    args = build_parser().parse_args(argv)
    try:
        args.duration_s = parse_duration(args.duration)
        warmup_s = parse_duration(args.warmup)
    except ValueError as exc:
        print(f"recserve soak: {exc}", file=sys.stderr)
        return 2
    host = urlparse(args.url).hostname
    if host not in LOOPBACK:
        print(f"recserve soak: --url {args.url}: load goes to 127.0.0.1 only", file=sys.stderr)
        return 2
    if not 0 < args.fraction <= 1 or args.capacity_rps <= 0:
        print("recserve soak: --fraction must be in (0, 1], --capacity-rps > 0", file=sys.stderr)
        return 2
    settings = {
        "url": args.url,
        "model": args.model,
        "duration_s": args.duration_s,
        "rate_rps": args.fraction * args.capacity_rps,
        "capacity_rps": args.capacity_rps,
        "fraction": args.fraction,
        "warmup_s": warmup_s,
        "sample_s": args.sample_s,
        "command": "recserve soak " + " ".join(argv if argv is not None else sys.argv[2:]),
    }
    rss, traffic = asyncio.run(run_soak(args, args.out))
    summary = write_results(args.out, settings, rss, traffic, warmup_s)
    print(json.dumps({k: summary[k] for k in ("requests", "ok", "passed", "reasons")}, indent=2))
    print(f"results in {args.out}/ (soak.json, rss.csv, traffic.csv, soak.png)")
    return 0 if summary["passed"] else 1
