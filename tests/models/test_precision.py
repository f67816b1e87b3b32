"""The number format a classifier is served in: which formats auto weighs, how the faster is
picked, and which formats cannot serve a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import precision
from models.precision import candidates, dtype_name, fastest, forward_ms, slow_format, trial_failure

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def _native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "bf16_native", lambda device: native)


def test_auto_weighs_bf16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    _native(monkeypatch, False)
    assert candidates("auto", CPU) == (F32,)  # nothing to time: auto costs nothing
    assert candidates("auto", CUDA) == (F32,)
    _native(monkeypatch, True)
    assert candidates("auto", CPU) == (F32, BF16)  # CPU flags: timed at load
    assert candidates("auto", CUDA) == (BF16,)


def test_an_explicit_format_is_the_only_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    _native(monkeypatch, False)
    assert [candidates(s, CPU) for s in ("float32", "bfloat16", "float16")] == [
        (F32,),
        (BF16,),
        (F16,),
    ]
    assert [dtype_name(dt) for dt in (F32, BF16, F16)] == ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize(
    ("bf16_ms", "expect"),
    [
        ([5.0, 50.0], BF16),  # faster at batch 1 and at the largest batch
        ([20.0, 200.0], F32),  # slower at both
        ([12.0, 40.0], BF16),  # a little slower at batch 1, much faster at 32
        ([10.2, 98.0], F32),  # within the margin: the exact format stays
        ([30.0, 60.0], F32),  # 3x slower at batch 1 outweighs 1.7x faster at 32
    ],
)
def test_fastest_weighs_latency_and_throughput_alike(
    bf16_ms: list[float], expect: torch.dtype
) -> None:
    assert fastest({F32: [10.0, 100.0], BF16: bf16_ms}) == expect


def test_forward_ms_times_every_model_at_every_batch() -> None:
    seen: list[tuple[torch.dtype, int]] = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.dtype, x.shape[0]))
            return x

    models = {F32: Record(), BF16: Record()}
    ms = forward_ms(models, lambda b, dt: torch.zeros(b, 3, dtype=dt), [1, 4], repeat=2)
    assert set(ms) == {F32, BF16} and all(len(t) == 2 and min(t) >= 0 for t in ms.values())
    # one warm call and two timed ones per model and batch, each on input in its own format
    assert sorted(seen, key=str) == sorted([(dt, b) for dt in models for b in (1, 4)] * 3, key=str)


def test_a_format_that_overflows_or_fails_cannot_serve() -> None:
    lin = nn.Linear(4, 2)
    x = torch.ones(1, 4)
    assert trial_failure(lin, x) is None
    big = nn.Linear(4, 2)
    nn.init.constant_(big.weight, 1e5)
    assert trial_failure(big.to(F16), x.to(F16)) == (
        "forward gave values that are not finite (overflow)"
    )
    failure = trial_failure(lin.to(F16), torch.ones(1, 4, dtype=F32))  # mismatched input
    assert failure is not None and failure.startswith("forward failed:")


def test_slow_formats_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _native(monkeypatch, False)
    assert "emulated" in (slow_format(BF16, CPU) or "")
    assert "float16" in (slow_format(F16, CPU) or "")
    assert slow_format(F32, CPU) is None and slow_format(F16, CUDA) is None
    _native(monkeypatch, True)
    assert slow_format(BF16, CPU) is None
