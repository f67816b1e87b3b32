"""Figures picked out of a benchmark report (benchmarks/run.py): the workloads it measured, each
server's points in one number format, the in-process ceiling and its bound at a concurrency,
and what a format buys each contender over float32. Shared by the target checks and the page
(benchmarks/report.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.loadgen import PROBE

Point = dict[str, Any]


def dtype_of(entry: dict[str, Any]) -> str:
    """The number format a point or ceiling ran in (float32 for reports from before it was
    recorded, when every contender ran float32)."""
    return str(entry.get("dtype") or "float32")


def workloads(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(endpoint, model, number format) of every table, in the order measured."""
    seen: dict[tuple[str, str, str], None] = {}
    for p in report["points"]:
        seen[(p["endpoint"], p["model"], dtype_of(p))] = None
    for c in report["ceiling"]:
        seen[(c["endpoint"], c["model"], dtype_of(c))] = None
    return list(seen)


def format_tag(report: dict[str, Any], dtype: str) -> str:
    """ " bfloat16": a workload's format in labels, where the report holds any but float32."""
    formats = {w[2] for w in workloads(report)}
    return "" if formats == {"float32"} else f" {dtype}"


def select(
    report: dict[str, Any], endpoint: str, model: str, prefix: str, dtype: str = "float32"
) -> list[Point]:
    """Points of contenders whose name starts with `prefix` (every configuration of one server)
    in one number format."""
    return [
        p
        for p in report["points"]
        if p["endpoint"] == endpoint
        and p["model"] == model
        and p["contender"].startswith(prefix)
        and dtype_of(p) == dtype
    ]


def ceiling_of(
    report: dict[str, Any], endpoint: str, model: str, dtype: str = "float32"
) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in report["ceiling"]
            if c["endpoint"] == endpoint and c["model"] == model and dtype_of(c) == dtype
        ),
        None,
    )


def bound_at(ceil: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    """The in-process bound with at most `concurrency` items in flight, where measured.

    More items in flight never allow less, and never more than the ceiling: each bound is
    measured on its own, so noise can put one above the next or above the ceiling. The figure
    used is the highest measured at this concurrency or below, capped at the ceiling (which
    only raises a bound, never lowers it; `measured_items_per_s` keeps what was measured).
    """
    bounds = (ceil or {}).get("in_flight", [])
    here = next((b for b in bounds if b["in_flight"] == concurrency), None)
    if here is None or ceil is None:
        return None
    best = max(b["items_per_s"] for b in bounds if b["in_flight"] <= concurrency)
    rate = min(best, ceil["items_per_s"])
    return here | {"items_per_s": rate, "measured_items_per_s": here["items_per_s"]}


def best_point(
    report: dict[str, Any],
    endpoint: str,
    model: str,
    concurrency: int,
    prefix: str,
    dtype: str = "float32",
) -> Point | None:
    """One server's best configuration (worker count, threads) at this point, by items/s."""
    points = select(report, endpoint, model, prefix, dtype)
    at_c = [p for p in points if p["concurrency"] == concurrency]
    return max(at_c, key=lambda p: p["items_per_s"], default=None)


def dtype_ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every contender's items/s in each other format over its float32 items/s at each
    concurrency, where both ran (the in-process ceiling at each concurrency it has a bound for,
    `_bound`): what the format buys each server in the same run."""
    out: list[dict[str, Any]] = []
    for endpoint, model, dt in workloads(report):
        if endpoint == PROBE or dt == "float32":
            continue
        base = {(p["contender"], p["concurrency"]): p
                for p in select(report, endpoint, model, "", "float32")}  # fmt: skip
        pairs = [
            (p["contender"], p["concurrency"], base[key]["items_per_s"], p["items_per_s"])
            for p in select(report, endpoint, model, "", dt)
            if (key := (p["contender"], p["concurrency"])) in base
        ]
        ceil, ceil32 = ceiling_of(report, endpoint, model, dt), ceiling_of(report, endpoint, model)
        for c in sorted({c for _, c, _, _ in pairs}):
            here, there = bound_at(ceil, c), bound_at(ceil32, c)
            if here and there:
                pairs.append(("ceiling", c, there["items_per_s"], here["items_per_s"]))
        for contender, c, fp32, rate in sorted(
            pairs, key=lambda t: (t[1], not t[0].startswith("ours"), t[0])
        ):
            out.append({"endpoint": endpoint, "model": model, "contender": contender,
                        "concurrency": c, "dtype": dt, "float32_items_per_s": fp32,
                        "items_per_s": rate, "ratio": rate / fp32 if fp32 else float("inf")})  # fmt: skip
    return out
