"""The README's quick-start curl lines, and what each answer must be (deploy/docker_smoke.py).

Each README line is matched by its path to one check below; a line no check knows fails the
smoke run, so a new README example comes with its check. Expected values come from the shipped
model cards in models/*/config.json (labels, latent size, input size), not from a copy here.

Beyond the README, the image must answer what the manifests probe (every `httpGet` path of
deploy/k8s and its KServe InferenceService, each shipped model ready under /v2) and serve the
page at / with every file of app/static, which travel in the image only as package data.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import struct
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def readme_curl_commands(readme: str) -> list[str]:
    """Curl commands (continuation lines joined) of the first bash block that probes /healthz."""
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        if "curl http://localhost:8000/healthz" in block:
            break
    else:
        raise AssertionError("README has no bash block with `curl http://localhost:8000/healthz`")
    commands: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and not line.startswith("curl "):
            continue
        current += line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(current.rstrip())
            current = ""
    return commands


def shipped_cards() -> dict[str, dict[str, Any]]:
    """Model name -> its card, for every checkpoint shipped in models/."""
    cards = {}
    for config in sorted(ROOT.glob("models/*/config.json")):
        if (config.parent / "model.safetensors").is_file():
            cards[config.parent.name] = json.loads(config.read_text())
    return cards


@dataclass
class Call:
    """One README curl line as sent, and what came back."""

    path: str
    query: dict[str, str]
    accept_json: bool
    parts: int  # multipart `-F image=@...` parts
    output: Path | None  # -o FILE
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        assert self.content_type.startswith("application/json"), self.content_type
        return json.loads(self.body)


def parse_call(command: str, status: int, content_type: str, body: bytes, cwd: Path) -> Call:
    """What a curl line asked for (its URL, Accept, uploads, output file)."""
    # $(python3 -c ...) substitutions are bash's: only the literal words matter here
    words = shlex.split(re.sub(r"\$\(.*?\)'\)", "X", command.replace("\\\n", " ")))
    url = next(w for w in words if w.startswith("http://"))
    split = urlsplit(url)
    output = words[words.index("-o") + 1] if "-o" in words else None
    return Call(
        path=split.path,
        query={k: v[-1] for k, v in parse_qs(split.query).items()},
        accept_json="Accept: application/json" in command,
        parts=sum(1 for i, w in enumerate(words) if w == "-F" and "@" in words[i + 1]),
        output=cwd / output if output else None,
        status=status,
        content_type=content_type,
        body=body,
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_MAGIC, f"not a PNG: {data[:16]!r}"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def default_of(kind: str, cards: dict[str, dict[str, Any]]) -> str:
    """The app's default model of a kind (app/settings.py), as served by the image."""
    from app.settings import Settings

    name = Settings.model_fields[
        "default_classifier" if kind == "classifier" else "default_vae"
    ].default
    assert name in cards, f"default {kind} {name} is not shipped"
    return str(name)


# --- checks per path: each returns a short summary of what it saw ---------------------------------


def check_healthz(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    assert c.json() == {"status": "ok"}, c.body
    return "live"


def check_readyz(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    answer = c.json()
    assert answer["ready"] is True and answer["failed"] == [], answer
    assert set(answer["models"]) == set(cards), (answer["models"], list(cards))
    return f"ready with {len(cards)} models"


def check_models(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    models = {m["name"]: m for m in c.json()["models"]}
    assert set(models) == set(cards), list(models)
    for name, card in cards.items():
        assert models[name]["weights_sha256"] == card["weights_sha256"], name
    return "every shipped model, weights digests as shipped"


def check_model(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    name = c.path.rsplit("/", 1)[1]
    info = c.json()
    assert info["name"] == name and info["weights_sha256"] == cards[name]["weights_sha256"]
    return f"card of {name}"


def check_classify(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    answer = c.json()
    model = c.query.get("model") or default_of("classifier", cards)
    assert answer["model"] == model, answer
    labels = cards[model]["labels"]
    results = answer["results"] if c.parts > 1 else [answer]
    assert len(results) == c.parts, answer
    top_k = int(c.query.get("top_k", min(5, len(labels))))
    for result in results:
        predictions = result["predictions"]
        probs = [p["probability"] for p in predictions]
        assert len(predictions) == top_k, predictions
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6, probs
        assert all(labels[p["index"]] == p["label"] for p in predictions), predictions
    return "top: " + ", ".join(r["predictions"][0]["label"] for r in results)


def check_encode(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    answer = c.json()
    model = c.query.get("model") or default_of("vae", cards)
    latent = cards[model]["config"]["latent"]
    assert answer["model"] == model and answer["latent_dim"] == latent, answer
    (result,) = answer["results"]
    assert len(result["mean"]) == len(result["log_var"]) == latent
    assert all(math.isfinite(v) for v in result["mean"] + result["log_var"])
    sampled = c.query.get("sample") == "true"
    assert (result["z"] is not None) == sampled, result["z"]
    return f"{latent}-d posterior" + (" and z" if sampled else "")


def image_shape(model: str, cards: dict[str, dict[str, Any]]) -> tuple[int, int]:
    size = cards[model]["input"]["size"]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_decode_or_sample(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    model = c.query.get("model") or default_of("vae", cards)
    h, w = image_shape(model, cards)
    n = int(c.query.get("n", 16)) if c.path == "/sample" else 1
    if c.accept_json:
        answer = c.json()
        assert answer["model"] == model and answer["shape"] == [h, w], answer["shape"]
        assert len(answer["images"]) == n and all(len(i) == h * w for i in answer["images"])
        assert all(0.0 <= v <= 1.0 for i in answer["images"] for v in i)
        if c.path == "/sample":
            assert answer["seed"] == int(c.query["seed"]) and len(answer["z"]) == n
        return f"{n} image(s) of {h}x{w} as JSON"
    assert c.content_type == "image/png", c.content_type
    assert c.output is not None, "a PNG answer is written with -o"
    width, height = png_size(c.output.read_bytes())
    if n == 1:
        assert (height, width) == (h, w), (height, width)
    else:  # a near-square grid with 2-pixel gaps
        assert width >= w * math.isqrt(n) and height >= h * math.isqrt(n), (width, height)
    return f"PNG {width}x{height}"


def check_metrics(c: Call, cards: dict[str, dict[str, Any]]) -> str:
    assert c.content_type.startswith("text/plain"), c.content_type
    text = c.body.decode()
    for name in cards:
        assert re.search(rf'^modelserve_model_info\{{[^}}]*model="{name}"', text, re.M), name
    served = re.findall(r"^modelserve_http_requests_total\{[^}]*\} (\S+)", text, re.M)
    assert served and sum(float(v) for v in served) > 0, "no requests counted"
    return f"{len(text.splitlines())} lines, requests counted"


README_CHECKS: list[tuple[str, Callable[[Call, dict[str, dict[str, Any]]], str]]] = [
    (r"/healthz", check_healthz),
    (r"/readyz", check_readyz),
    (r"/models", check_models),
    (r"/models/[^/]+", check_model),
    (r"/classify", check_classify),
    (r"/encode", check_encode),
    (r"/decode|/sample", check_decode_or_sample),
    (r"/metrics", check_metrics),
]


def check_answer(command: str, status: int, content_type: str, body: bytes, cwd: Path) -> str:
    """Check one README line's answer; AssertionError says what is wrong."""
    call = parse_call(command, status, content_type, body, cwd)
    assert status == 200, f"status {status}: {body[:300]!r}"
    for pattern, check in README_CHECKS:
        if re.fullmatch(pattern, call.path):
            return check(call, shipped_cards())
    raise AssertionError(f"no check for {call.path}: add one to deploy/smoke_checks.py")


# --- beyond the README: the manifests' probes and the page ---------------------------------------


def manifest_probe_paths() -> list[str]:
    """Every `httpGet` probe path of the Deployment and the KServe InferenceService."""
    paths: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "httpGet" in node:
                paths.add(node["httpGet"]["path"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for manifest in ("deploy/k8s/deployment.yaml", "deploy/k8s/kserve/inferenceservice.yaml"):
        walk(yaml.safe_load((ROOT / manifest).read_text()))
    return sorted(paths)


def fetch(base_url: str, path: str) -> tuple[str, bytes]:
    """(content type, body) of a GET that must answer 200."""
    try:
        with urllib.request.urlopen(base_url + path, timeout=30) as r:
            return r.headers.get("Content-Type", ""), r.read()
    except OSError as e:  # HTTPError (any status but 2xx) included
        raise AssertionError(f"GET {path}: {e}") from None


def check_probes(base_url: str) -> str:
    """The manifests' probes answer 200, and every shipped model is a ready v2 model (a
    classifier under its name, a VAE's encoder as `{name}.encode`: docs/api.md)."""
    probes = manifest_probe_paths()
    for path in probes:
        fetch(base_url, path)
    for name, card in shipped_cards().items():
        v2_name = name if card["task"] == "classification" else f"{name}.encode"
        assert json.loads(fetch(base_url, f"/v2/models/{v2_name}")[1])["name"] == v2_name
        assert json.loads(fetch(base_url, f"/v2/models/{v2_name}/ready")[1]) == {"ready": True}
    return f"probes of deploy/k8s answer 200 ({', '.join(probes)}); every model ready under /v2"


def check_page(base_url: str) -> str:
    """GET / is app/static/index.html and /ui/{name} every other file there, byte for byte:
    the page is package data, which only a non-editable install (the image's) can lose."""
    static = ROOT / "app/static"
    content_type, body = fetch(base_url, "/")
    assert content_type.startswith("text/html"), content_type
    assert body == (static / "index.html").read_bytes(), "GET / is not app/static/index.html"
    assets = sorted(p.name for p in static.iterdir() if p.is_file() and p.name != "index.html")
    for name in assets:
        assert fetch(base_url, f"/ui/{name}")[1] == (static / name).read_bytes(), name
    return f"page / and its {len(assets)} assets served as in app/static"
