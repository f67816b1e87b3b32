"""One figure from several rounds of the same measurement: the median round, every round beside it."""

from __future__ import annotations

from typing import Any


def median_of_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One point per (contender, number format, endpoint, model, concurrency): the round with the median
    requests/s (the lower middle one for an even count), whole, so its latencies belong to its
    throughput; every round's requests/s is kept beside it in `rounds_requests_per_s`."""
    if len(rounds) == 1:
        return rounds[0]
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for points in rounds:
        for p in points:
            key = (p["contender"], p.get("dtype"), p["endpoint"], p["model"], p["concurrency"])
            by_key.setdefault(key, []).append(p)
    merged = []
    for same in by_key.values():
        ranked = sorted(same, key=lambda p: p["requests_per_s"])
        merged.append(
            {
                **ranked[(len(ranked) - 1) // 2],
                "rounds_requests_per_s": [p["requests_per_s"] for p in same],
            }
        )
    return merged


CEILING_FIGURES = ("items_per_s", "single_p50_ms", "single_after_idle_p50_ms")


def median_ceilings(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ceiling per endpoint from its measurement in every round: each figure the median of
    the rounds (the throughput and the single-item latencies are separate measurements, so each
    takes its own), every round's value kept beside it in `rounds_<figure>`. For an even count
    the tie goes against the servers: the higher throughput, the lower latency."""
    if not rounds:
        return []
    merged = []
    for same in zip(*rounds, strict=True):
        # Whole fields (threads, batch size) from the round with the median throughput.
        out = dict(sorted(same, key=lambda c: c["items_per_s"])[len(same) // 2])
        for figure in CEILING_FIGURES:
            values = [c[figure] for c in same if c.get(figure) is not None]
            if values:
                ranked = sorted(values)
                out[figure] = ranked[
                    len(values) // 2 if figure == "items_per_s" else (len(values) - 1) // 2
                ]
                if len(same) > 1:
                    out[f"rounds_{figure}"] = values
        if out.get("in_flight"):
            out["in_flight"] = [
                _median_bound(list(bounds))
                for bounds in zip(*(c["in_flight"] for c in same), strict=True)
            ]
        merged.append(out)
    return merged


def _median_bound(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One in-flight bound (benchmarks.inprocess --in-flight) from every round's: the round with
    the median items/s (the higher one of an even count), every round's figure beside it."""
    out = dict(sorted(rounds, key=lambda b: b["items_per_s"])[len(rounds) // 2])
    if len(rounds) > 1:
        out["rounds_items_per_s"] = [b["items_per_s"] for b in rounds]
    return out
