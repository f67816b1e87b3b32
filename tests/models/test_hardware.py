"""The CPU capability reader that training's `--amp auto` and serving's `MODELSERVE_DTYPE=auto`
share."""

from pathlib import Path

import torch

from models.hardware import bf16_native, cpu_bf16_flags, cpu_fields

BLOCK = "processor\t: 0\nmodel name\t: Example CPU\nflags\t\t: fpu sse2 avx512f {extra}\n\n"


def _cpuinfo(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "cpuinfo"
    # a second processor's block with other flags must not be read
    p.write_text(BLOCK.format(extra=extra) + BLOCK.format(extra="amx_bf16"))
    return p


def test_first_processor_fields(tmp_path: Path) -> None:
    fields = cpu_fields(_cpuinfo(tmp_path, ""))
    assert fields["model name"] == "Example CPU"
    assert "avx512f" in fields["flags"].split()


def test_bf16_flags(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert cpu_bf16_flags(_cpuinfo(tmp_path, "avx512_bf16 amx_bf16")) == ["amx_bf16", "avx512_bf16"]
    assert bf16_native(cpu, _cpuinfo(tmp_path, "avx512_bf16"))
    assert not bf16_native(cpu, _cpuinfo(tmp_path, "avx512_vnni"))
    assert not bf16_native(cpu, tmp_path / "missing")
