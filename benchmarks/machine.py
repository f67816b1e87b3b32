"""What a benchmark's figures were measured on: CPU (name, family/model, vector ISA), cores,
memory, versions and commit, recorded in every report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_id(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """ "family 26 model 2 stepping 1" from /proc/cpuinfo (None where there is none)."""
    from models.hardware import cpu_fields

    fields = cpu_fields(cpuinfo)
    parts = [
        f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields
    ]
    return " ".join(parts) or None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from models.hardware import cpu_model_name

    cpu = cpu_model_name()
    try:
        import litserve

        litserve_version = litserve.__version__
    except ImportError:
        litserve_version = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    return {
        "cpu": cpu,
        # "AMD EPYC" names several generations: family/model/stepping and the vector ISA torch
        # dispatches to tell them apart (the same VM name has run 3x apart in images/s)
        "cpu_id": cpu_id(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "litserve": litserve_version,
        "commit": commit.stdout.strip() or "unknown",
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
