"""One command for the whole benchmark: three contenders, two AlexNets and the VAE, one report.

For each model group (shipped small AlexNet, full-size 224x224 AlexNet, shipped VAE) it
1. starts our service (uvicorn subprocess on a free loopback port, that group's model dir) and
   sweeps its endpoints with the load generator;
2. does the same for LitServe (benchmarks/litserve_server.py) once per worker count asked for;
3. measures the in-process ceiling (benchmarks/inprocess.py) in a subprocess.
With --dtype float32 bfloat16 ... every contender runs the classifier groups once per number
format, like for like: our service with MODELSERVE_DTYPE pinned to it, the ceiling and LitServe
loading the same model in it (`benchmarks.ops.load`); the report gives each point's format and
each contender's throughput in each format over its float32 throughput at each concurrency. The
VAE group runs once, in float32, as the service serves VAEs under every MODELSERVE_DTYPE.
With --rounds N all three are repeated N times, in turn (the order reversed every other round),
and every figure reported is the median round's, the range of the rounds beside it.
Servers run in their own process group and are stopped (SIGTERM, then SIGKILL) after their
sweep; every loop is bounded by the durations given. Writes benchmarks/results/<date>.json and
benchmarks/results/latest.md, with the machine's description and the issue's targets checked.

    python -m benchmarks.run --quick          # ~3 minutes: checks the harness end to end
    python -m benchmarks.run                  # the full sweep (1, 4, 16, 64), ~15 minutes
    python -m benchmarks.run --groups full --dtype float32 bfloat16   # both formats, one run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from benchmarks import loadgen
from benchmarks.inputs import DEFAULT_DATA_DIR, Corpus, grey_corpus, latent_rows, rgb_corpus
from benchmarks.machine import machine
from benchmarks.make_checkpoints import prepare
from benchmarks.report import check_targets, render_markdown
from benchmarks.rounds import median_ceilings, median_of_rounds
from benchmarks.selection import dtype_ratios
from benchmarks.servers import REPO, serve_litserve, serve_ours
from models.checkpoint import read_card
from models.precision import DTYPES

GROUP_ENDPOINTS = {
    "small": ["classify"],
    "full": ["classify"],
    "vae": ["encode", "decode", "sample"],
}


@dataclass(frozen=True)
class Inputs:
    """The same bytes and latents for every contender."""

    rgb: Corpus  # /classify uploads
    grey: Corpus  # /encode uploads
    latents: list[list[float]]  # /decode rows


def sweep_server(
    contender: str,
    flavour: str,
    url: str,
    model: str,
    endpoints: list[str],
    inputs: Inputs,
    args: argparse.Namespace,
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """Every endpoint of one running server through the concurrency sweep; each point records
    the number format the server runs its model in."""
    points = []
    for endpoint in endpoints:
        corpus = inputs.rgb if endpoint == "classify" else inputs.grey
        request = loadgen.make_requester(flavour, endpoint, model, corpus, inputs.latents)
        results = loadgen.run(
            loadgen.sweep(
                url,
                contender,
                endpoint,
                model,
                request,
                args.concurrency,
                args.duration,
                args.warmup,
                transport=args.transport,
            )
        )
        print(loadgen.format_table(results), flush=True)
        points += [asdict(p) | {"dtype": dtype} for p in results]
    # The transport floor: a probe that does no model work, one client, same client code.
    probe = "/healthz" if flavour == "ours" else "/health"
    floor = loadgen.run(
        loadgen.sweep(
            url,
            contender,
            loadgen.PROBE,
            model,
            lambda i: ("GET", probe, {}),
            [1],
            args.duration,
            args.warmup,
            transport=args.transport,
        )
    )
    print(loadgen.format_table(floor), flush=True)
    return points + [asdict(p) | {"dtype": dtype} for p in floor]


class Contender(NamedTuple):
    """One server configuration: ours-wN (N processes), ours-tN (N threads), ours-lN (N lanes)."""

    flavour: str  # "ours", "litserve" or "inprocess"
    name: str
    workers: int = 1
    threads: int | None = None
    lanes: int = 1
    dtype: str = "float32"  # the classifier's number format (MODELSERVE_DTYPE, pinned)


def contenders(args: argparse.Namespace) -> list[Contender]:
    """Every server configuration asked for, in order."""
    out: list[Contender] = []
    if "ours" in args.contenders:
        out.append(Contender("ours", "ours"))
        out += [Contender("ours", f"ours-w{w}", workers=w) for w in args.ours_workers if w != 1]
        out += [Contender("ours", f"ours-t{t}", threads=t) for t in args.ours_threads]
        out += [Contender("ours", f"ours-l{n}", lanes=n) for n in args.ours_lanes if n != 1]
    if "litserve" in args.contenders:
        out += [Contender("litserve", f"litserve-w{w}", workers=w) for w in args.litserve_workers]
    return out


def served_dtype(url: str, model: str, asked: str) -> str:
    """The format our service runs `model` in, as /models/{name} shows it; a model that cannot
    run in the format asked for runs in float32 (`models.precision`), which is said here."""
    served = str(httpx.get(f"{url}/models/{model}", timeout=10).json()["dtype"])
    if served != asked:
        print(f"!! {model} runs in {served}, not {asked}, in our service", flush=True)
    return served


# Endpoints whose ceiling is also measured per concurrency (`--in-flight`): the image
# classifier, whose full-size model is the compute-bound target, where fewer items in flight
# mean smaller and dearer batches. The VAE endpoints are bound by the serving overhead.
IN_FLIGHT_ENDPOINTS = ("classify",)


def ceiling(
    model_dir: Path, endpoint: str, args: argparse.Namespace, tmp: Path, dtype: str = "float32"
) -> dict[str, Any]:
    """The in-process ceiling, in a fresh interpreter so no server state or threads interfere."""
    out = tmp / f"ceiling-{model_dir.name}-{endpoint}-{dtype}.json"
    cmd = [sys.executable, "-m", "benchmarks.inprocess", str(model_dir), "--endpoint", endpoint,
           "--batch-size", str(args.max_batch_size), "--duration", str(args.ceiling_duration),
           "--data-dir", str(args.data_dir), "--json", str(out), "--device", args.device,
           "--dtype", dtype]  # fmt: skip
    if endpoint in IN_FLIGHT_ENDPOINTS:
        cmd += ["--in-flight", *map(str, args.concurrency)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, timeout=600)
    return dict(json.loads(out.read_text()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every contender on every group asked for; the whole report as a dict."""
    groups = prepare(args.models_root)
    data_dir = args.data_dir if args.data_dir.is_dir() else None
    vae_dir, vae_name = groups["vae"]
    latent_dim = int(read_card(vae_dir / vae_name).config.get("latent", 20))
    inputs = Inputs(rgb_corpus(data_dir), grey_corpus(data_dir), latent_rows(256, latent_dim))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(args.argv),
        "machine": machine(),
        "config": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "device": args.device,
            "max_batch_size": args.max_batch_size,
            "batch_timeout_ms": args.batch_timeout_ms,
            "litserve_workers": args.litserve_workers,
            "rounds": args.rounds,
            "transport": args.transport,
            "dtypes": args.dtype,
            "litserve": "LitServer(accelerator='cpu', workers_per_device=W, fast_queue=True, "
            "num_api_servers=default (=W)); each worker torch.set_num_threads(cores // W); "
            "LitAPI(max_batch_size, batch_timeout) equal to ours; model loaded by "
            "benchmarks.ops.load as the ceiling's (channels-last AlexNets, fully connected "
            "layers packed for oneDNN where timing each at load found that faster, as the "
            "service's default MODELSERVE_PREPACK_LINEAR=auto)",
            "ours": "uvicorn app.main:app, 1 process, MODELSERVE_MAX_BATCH_SIZE / "
            "MODELSERVE_BATCH_TIMEOUT_MS as above, other settings default (torch threads = "
            "cores), log level WARNING; ours-wN: N worker processes (WEB_CONCURRENCY=N, "
            "PROMETHEUS_MULTIPROC_DIR set, torch threads = cores // N each); ours-tN: one "
            "process with MODELSERVE_TORCH_THREADS=N; ours-lN: one process with "
            "MODELSERVE_INFERENCE_LANES=N (N batches side by side, torch threads = cores); worker "
            f"counts tried: {args.ours_workers}, lanes: {[1, *args.ours_lanes]}",
            "ceiling": "benchmarks.inprocess: decode + preprocess + forward at batch = max_batch_size; "
            "single-item latency at batch 1; throughput the best of 1 thread, all cores, and one "
            "single-threaded loop per core side by side; latency the best of 1 thread and all "
            "cores; for /classify also at each concurrency c, the most items/s with at most c "
            "items in flight (`--in-flight`); measured in every round, in turn with the servers, "
            "each figure the median of the rounds",
        },
        "inputs": {
            "classify": inputs.rgb.source,
            "encode": inputs.grey.source,
            "decode/sample": "N(0, I) rows / seeds",
        },
        "models": {g: str(d / name) for g, (d, name) in groups.items()},
        "points": [],
        "ceiling": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        for group in args.groups:
            group_dir, model = groups[group]
            endpoints = [e for e in GROUP_ENDPOINTS[group] if e in args.endpoints]
            if not endpoints:
                continue
            print(f"\n== {group}: {model} ({', '.join(endpoints)})", flush=True)
            # VAEs run in float32 under every MODELSERVE_DTYPE: their group runs once
            dtypes = ["float32"] if group == "vae" else args.dtype
            rounds: list[list[dict[str, Any]]] = []
            ceilings: dict[str, list[list[dict[str, Any]]]] = {dt: [] for dt in dtypes}
            servers = contenders(args)
            if "inprocess" in args.contenders:  # the ceiling takes its turn in every round too
                servers.append(Contender("inprocess", "ceiling"))
            # each contender in every format back to back: a machine whose other work comes and
            # goes shifts a contender's formats alike, not one format's figures against another's
            servers = [c._replace(dtype=dt) for c in servers for dt in dtypes]
            for r in range(args.rounds):
                # Odd rounds run the contenders in reverse order, so a machine that drifts
                # faster or slower during the group does not favour whoever runs first.
                points: list[dict[str, Any]] = []
                for c in servers if r % 2 == 0 else servers[::-1]:
                    if c.flavour == "inprocess":
                        ceilings[c.dtype].append(
                            [
                                ceiling(group_dir / model, endpoint, args, tmp, c.dtype)
                                for endpoint in endpoints
                            ]
                        )
                        continue
                    log = tmp / f"{c.name}-{c.dtype}-{group}-{r}.log"
                    print(f"-- {c.name} {c.dtype}", flush=True)
                    if c.flavour == "ours":
                        served = serve_ours(
                            group_dir, model, args.max_batch_size, args.batch_timeout_ms, log,
                            c.threads, c.workers, args.device, c.lanes, c.dtype,
                        )  # fmt: skip
                    else:
                        served = serve_litserve(
                            group_dir / model, c.workers, args.max_batch_size,
                            args.batch_timeout_ms, log, args.device, c.dtype,
                        )  # fmt: skip
                    with served as (url, _):
                        dtype = (
                            served_dtype(url, model, c.dtype) if c.flavour == "ours" else c.dtype
                        )
                        points += sweep_server(
                            c.name, c.flavour, url, model, endpoints, inputs, args, dtype
                        )
                rounds.append(points)
            report["points"] += median_of_rounds(rounds)
            for dt in dtypes:
                for result in median_ceilings(ceilings[dt]):
                    print(f"ceiling {result['endpoint']} {model} {dt}: {result['items_per_s']} "
                          f"items/s, single p50 {result['single_p50_ms']} ms", flush=True)  # fmt: skip
                    report["ceiling"].append(result)
            if args.partial:  # a killed run keeps the groups it finished
                args.partial.write_text(json.dumps(report, indent=2) + "\n")
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = check_targets(report)
    report["dtype_ratios"] = dtype_ratios(report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short points (c=1,16; 2 s) to check the harness"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="sweep every server this many times, alternating the order of the contenders, and "
        "report each point's median round (default 1)",
    )
    parser.add_argument(
        "--ours-threads",
        type=int,
        nargs="+",
        default=[],
        help="also run our service with MODELSERVE_TORCH_THREADS=N (contender ours-tN)",
    )
    parser.add_argument(
        "--ours-lanes",
        type=int,
        nargs="+",
        default=None,
        help="also run our service in one process with MODELSERVE_INFERENCE_LANES=N (contender "
        "ours-lN; default: the number of cores on a CPU, none with --quick)",
    )
    parser.add_argument(
        "--ours-workers",
        type=int,
        nargs="+",
        default=None,
        help="our worker process counts to try, as for LitServe (default 1 2, quick 1; "
        "contender ours-wN)",
    )
    parser.add_argument(
        "--groups", nargs="+", choices=list(GROUP_ENDPOINTS), default=list(GROUP_ENDPOINTS)
    )
    parser.add_argument(
        "--endpoints", nargs="+", choices=loadgen.ENDPOINTS, default=list(loadgen.ENDPOINTS)
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=("ours", "litserve", "inprocess"),
        default=["ours", "litserve", "inprocess"],
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=None, help="default 1 4 16 64 (quick: 1 16)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per point (default 5, quick 2)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds per point (default 1, quick 0.5)",
    )
    parser.add_argument(
        "--ceiling-duration",
        type=float,
        default=None,
        help="seconds of the in-process loop (default 5, quick 2)",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="ours and LitServe alike")
    parser.add_argument(
        "--batch-timeout-ms", type=float, default=2.0, help="ours and LitServe alike"
    )
    parser.add_argument(
        "--litserve-workers",
        type=int,
        nargs="+",
        default=None,
        help="LitServe worker counts to try (default 1 2, quick 1)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:N]: all three contenders run their models there (default: cpu)",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["float32"],
        help="the classifiers' number formats: every contender runs in each, like for like "
        "(ours with MODELSERVE_DTYPE set to it, never auto); the VAE group runs once, in "
        "float32, as the service serves VAEs (default: float32)",
    )
    parser.add_argument(
        "--transport",
        choices=loadgen.TRANSPORTS,
        default="lean",
        help="the load generator's wire: benchmarks.transport (default) or httpx's own",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models-root", type=Path, default=REPO / "runs" / "bench" / "models")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.partial = None
    q = args.quick
    args.concurrency = args.concurrency or ([1, 16] if q else [1, 4, 16, 64])
    args.duration = args.duration or (2.0 if q else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    args.ceiling_duration = args.ceiling_duration or (2.0 if q else 5.0)
    args.litserve_workers = args.litserve_workers or ([1] if q else [1, 2])
    args.ours_workers = args.ours_workers or ([1] if q else [1, 2])
    if args.ours_lanes is None:  # one lane per core, where there are cores to share
        cores = os.cpu_count() or 1
        args.ours_lanes = [cores] if cores > 1 and args.device == "cpu" and not q else []
    return args


def main(argv: list[str] | None = None) -> None:
    # SIGTERM -> SystemExit, so the `server` blocks' finally clauses stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
    json_path = args.out / f"{stamp}.json"
    args.partial = args.out / f"{stamp}.partial.json"
    report = run(args)
    args.partial.unlink(missing_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (args.out / "latest.md").write_text(markdown)
    print("\n" + markdown)
    print(f"wrote {json_path} and {args.out / 'latest.md'}")


if __name__ == "__main__":
    main()
