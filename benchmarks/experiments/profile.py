"""Where our server spends its time under load: py-spy samples it while the load generator runs.

Starts our service on one model group, drives one endpoint at one concurrency for `--duration`
seconds while `py-spy record` samples every thread of the server process, then prints the
functions with the most samples on top of the stack (self) and anywhere on it (inclusive).
Idle threads (waiting in select/epoll, locks, queue gets) are left out unless `--idle`.

It also splits the samples between the inference threads (batches running) and the rest of
the process (the event loop: HTTP, forms, decoding, answers), as busy threads on average and
in milliseconds per request. py-spy sees Python threads only (a lane's extra OpenMP threads
are not counted) and counts a thread that is runnable but waiting for a core as busy, so on a
loaded machine these are thread-seconds wanted, not CPU-seconds had. And it reads the
server's /metrics before and after the load for the batches it ran: how many, their mean size
and time, and how busy the inference threads were (the sum of batch seconds over wall time;
2.0 is two lanes never idle).

    python -m benchmarks.experiments.profile --group vae --endpoint decode --concurrency 1 --duration 10
    python -m benchmarks.experiments.profile --group full --endpoint classify --concurrency 16 --lanes 2 \
        --duration 20 --rate 100 --top 60
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import loadgen
from benchmarks.inputs import DEFAULT_DATA_DIR, grey_corpus, latent_rows, rgb_corpus
from benchmarks.machine import machine
from benchmarks.make_checkpoints import prepare
from benchmarks.report import cpu_detail
from benchmarks.run import GROUP_ENDPOINTS
from benchmarks.servers import REPO, serve_ours
from models.checkpoint import read_card

# A sample whose stack holds this frame was taken on an inference thread, running a batch.
INFERENCE_FRAME = "Batcher._work"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """'func (path/to/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py)'."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"].split("site-packages/")[-1].replace(str(REPO) + "/", "")
    return f"{m['func']} ({path})"


def summarise(raw: str, top: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """py-spy's collapsed stacks ('f1;f2;...;fn count' per line) -> total, self and inclusive."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        total += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return total, self_counts.most_common(top), inclusive.most_common(top)


def split_threads(raw: str) -> tuple[int, int]:
    """Samples on inference threads (running a batch) and samples elsewhere in the process."""
    inference = other = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if INFERENCE_FRAME in stack:
            inference += int(count)
        else:
            other += int(count)
    return inference, other


# (name, samples' sum or count) -> value, summed over every label set
BatchCounters = dict[str, float]


def batch_counters(metrics_text: str) -> BatchCounters:
    """The batch histograms' running sums and counts from a /metrics page."""
    wanted = {"modelserve_inference_duration_seconds", "modelserve_batch_size"}
    out: BatchCounters = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def batch_summary(before: BatchCounters, after: BatchCounters, wall_s: float) -> str:
    """What the batches between two scrapes `wall_s` apart did."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("modelserve_batch_size_count", 0.0)
    if not batches:
        return "no batches ran"
    busy_s = d["modelserve_inference_duration_seconds_sum"]
    return (
        f"{batches:.0f} batches in {wall_s:.1f} s, mean size "
        f"{d['modelserve_batch_size_sum'] / batches:.2f}, mean time {1000 * busy_s / batches:.1f} "
        f"ms; inference threads busy {busy_s / wall_s:.2f} (batch seconds per second)"
    )


def format_profile(
    title: str,
    raw: str,
    top: int = 25,
    *,
    rate: float | None = None,
    seconds: float | None = None,
    requests_per_s: float | None = None,
    batches: str | None = None,
    header: Sequence[str] = (),
) -> str:
    """A plain-text report of one profile. With the sampling `rate`, the `seconds` sampled and
    the load's `requests_per_s`, also the busy threads on average, inference and the rest,
    and the rest's per request (not with idle samples kept: they would count as busy).
    `header`: lines under the title (the command, the machine)."""
    total, self_top, incl_top = summarise(raw, top)
    lines = [f"# {title}", *header, f"{total} samples of busy threads"]
    if rate and seconds:
        inference, other = split_threads(raw)
        busy = [n / rate / seconds for n in (inference, other)]
        split = f"busy threads on average: inference {busy[0]:.2f}; the rest (event loop, "
        split += f"thread pool) {busy[1]:.2f}"
        if requests_per_s:
            split += f", {1000 * busy[1] / requests_per_s:.3f} ms per request"
        lines.append(split)
    if batches:
        lines.append(f"batches: {batches}")
    lines += ["", "## self (top of stack)"]
    lines += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in self_top]
    lines += ["", "## inclusive (anywhere on the stack)"]
    lines += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in incl_top]
    return "\n".join(lines) + "\n"


def target(
    models_root: Path, group: str, endpoint: str, data_dir: Path
) -> tuple[Path, str, Callable[[int], loadgen.RequestSpec]]:
    """A model group's directory (checkpoints written if missing), its model's name, and the
    load generator's requests for `endpoint` (the benchmark's inputs from `data_dir`)."""
    group_dir, model = prepare(models_root)[group]
    data = data_dir if data_dir.is_dir() else None
    latent = int(read_card(group_dir / model).config.get("latent", 20))
    corpus = rgb_corpus(data) if endpoint == "classify" else grey_corpus(data)
    return (
        group_dir,
        model,
        loadgen.make_requester("ours", endpoint, model, corpus, latent_rows(256, latent)),
    )


def add_target_arguments(
    parser: argparse.ArgumentParser, group: str, endpoint: str, concurrency: int
) -> None:
    """The options naming what `target` loads and how our server is started and driven."""
    parser.add_argument("--group", choices=list(GROUP_ENDPOINTS), default=group)
    parser.add_argument("--endpoint", choices=loadgen.ENDPOINTS, default=endpoint)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models-root", type=Path, default=REPO / "runs" / "bench" / "models")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_arguments(parser, group="vae", endpoint="decode", concurrency=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds sampled under load")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="keep idle threads' samples")
    parser.add_argument("--top", type=int, default=25, help="functions listed per table")
    parser.add_argument(
        "--lanes", type=int, default=1, help="MODELSERVE_INFERENCE_LANES of the server"
    )
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(REPO / ".venv" / "bin" / "py-spy"))
    group_dir, model, request = target(args.models_root, args.group, args.endpoint, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        raw_path = Path(tmp) / "stacks.txt"
        log = Path(tmp) / "server.log"
        with serve_ours(
            group_dir, model, args.max_batch_size, args.batch_timeout_ms, log, lanes=args.lanes
        ) as (url, pid):
            before, t0 = batch_counters(httpx.get(url + "/metrics").text), time.perf_counter()
            cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)),
                   "--rate", str(args.rate), "--format", "raw", "--output", str(raw_path),
                   "--nonblocking"] + (["--idle"] if args.idle else [])  # fmt: skip
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            points = loadgen.run(
                loadgen.sweep(
                    url,
                    "ours",
                    args.endpoint,
                    model,
                    request,
                    [args.concurrency],
                    args.duration,
                    warmup=0.0,
                )
            )
            after, t1 = batch_counters(httpx.get(url + "/metrics").text), time.perf_counter()
            _, err = spy.communicate(timeout=args.duration + 60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
        lanes = f", {args.lanes} lanes" if args.lanes != 1 else ""
        m = machine()
        title = (
            f"ours{lanes} /{args.endpoint} {model} c={args.concurrency}: "
            f"{points[0].requests_per_s} req/s, p50 {points[0].p50_ms} ms"
        )
        report = format_profile(
            title,
            raw_path.read_text(),
            args.top,
            rate=None if args.idle else args.rate,
            seconds=int(args.duration),
            requests_per_s=points[0].requests_per_s,
            batches=batch_summary(before, after, t1 - t0),
            header=[
                f"command: python -m benchmarks.experiments.profile {shlex.join(argv or sys.argv[1:])}",
                f"machine: {m['cpu']}{cpu_detail(m)}, {m['cores']} cores; torch {m['torch']}; "
                f"commit {m['commit']}",
            ],
        )
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
