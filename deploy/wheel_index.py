"""A package index for `docker build` made of local PEP 503 trees, falling back to PyPI.

The image installs torch with `pip install --index-url $TORCH_INDEX_URL`, so the index must hold
torch and every dependency it pulls in. A machine with wheels on disk (a mirror of some projects,
say /opt/pypi and /opt/pypi-more, each `simple/<project>/index.html` with links relative to it)
serves them with this: pages of projects found locally list the local files of every tree,
and a project found in none is redirected to the fallback index. deploy/docker_smoke.py starts
it on 127.0.0.1 and builds with `--network host`, so the build's pip reaches it.

    python deploy/wheel_index.py /opt/pypi /opt/pypi-more --port 8765
"""

from __future__ import annotations

import argparse
import html
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LINK = re.compile(r'<a\s+href="([^"]+)"[^>]*>([^<]+)</a>')


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def collect(roots: Sequence[Path]) -> dict[str, list[tuple[int, str, str]]]:
    """project -> [(root index, file path relative to that root + #hash, file name)]."""
    projects: dict[str, list[tuple[int, str, str]]] = {}
    for n, root in enumerate(roots):
        simple = root / "simple"
        if not simple.is_dir():
            raise SystemExit(f"{root}: no simple/ folder (a PEP 503 tree is expected)")
        for page in simple.glob("*/index.html"):
            base = page.parent
            for href, text in LINK.findall(page.read_text(errors="replace")):
                target, _, fragment = href.partition("#")
                path = (base / unquote(target)).resolve()
                relative = path.relative_to(root.resolve()).as_posix()
                entry = relative + (f"#{fragment}" if fragment else "")
                projects.setdefault(normalize(base.name), []).append((n, entry, text.strip()))
    return projects


class WheelIndex(ThreadingHTTPServer):
    """Serves /simple/<project>/ and /files/<n>/<path>; redirects unknown projects."""

    daemon_threads = True

    def __init__(self, roots: Sequence[Path], fallback: str, port: int = 0) -> None:
        self.roots = [r.resolve() for r in roots]
        self.projects = collect(self.roots)
        self.fallback = fallback.rstrip("/")
        super().__init__(("127.0.0.1", port), IndexHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, daemon=True).start()


class IndexHandler(BaseHTTPRequestHandler):
    server: WheelIndex

    def do_GET(self) -> None:
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            self.project(normalize(unquote(parts[1])))
        elif len(parts) >= 3 and parts[0] == "files" and parts[1].isdigit():
            self.file(int(parts[1]), "/".join(unquote(p) for p in parts[2:]))
        else:
            self.send_error(404)

    def project(self, name: str) -> None:
        files = self.server.projects.get(name)
        if not files:
            self.send_response(302)
            self.send_header("Location", f"{self.server.fallback}/{name}/")
            self.end_headers()
            return
        links = "\n".join(
            f'<a href="/files/{n}/{html.escape(entry)}">{html.escape(text)}</a><br>'
            for n, entry, text in files
        )
        body = f"<!DOCTYPE html><html><body>\n{links}\n</body></html>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def file(self, n: int, relative: str) -> None:
        if n >= len(self.server.roots):
            self.send_error(404)
            return
        root = self.server.roots[n]
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                self.wfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding simple/<project>/")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fallback", default="https://pypi.org/simple")
    args = parser.parse_args()
    server = WheelIndex(args.roots, args.fallback, args.port)
    print(f"{server.url} ({len(server.projects)} projects on disk, the rest from {args.fallback})")
    server.serve_forever()


if __name__ == "__main__":
    main()
