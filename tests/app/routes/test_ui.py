"""GET / and /ui/: the page's files as the server sends them (the page at work: test_ui_browser)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.routes.ui import STATIC
from tests.app.conftest import test_settings, wait_ready

ROOT = Path(__file__).resolve().parents[3]


def _assets(html: str) -> list[str]:
    """Every file the page loads itself: <link href> and <script src> of relative URLs."""
    return [u for u in re.findall(r'(?:href|src)="([^"]+)"', html) if u.startswith("ui/")]


def test_page_is_html_with_a_strict_content_security_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>modelserve</title>" in r.text
    csp = r.headers["content-security-policy"]
    # Everything from this origin: no CDN, no inline scripts or styles.
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # not part of the API


def test_every_asset_and_module_the_page_loads_is_served(client: TestClient) -> None:
    html = client.get("/").text
    assets = _assets(html)
    assert {"ui/app.js", "ui/app.css"} <= set(assets)
    # ES modules import their siblings: follow `from "./x.js"` to the end.
    todo, seen = list(assets), set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        r = client.get(f"/{url}")
        assert r.status_code == 200, url
        if url.endswith(".js"):
            # A module script of any other type is refused by browsers.
            assert r.headers["content-type"].split(";")[0] in {
                "text/javascript",
                "application/javascript",
            }, url
            todo += [f"ui/{m}" for m in re.findall(r'from "\./([^"]+)"', r.text)]
    assert seen >= {"ui/app.js", "ui/api.js", "ui/pad.js", "ui/app.css"}


def test_assets_revalidate_and_nothing_else_is_served(client: TestClient) -> None:
    for path in ("/", "/ui/app.js"):
        etag = client.get(path).headers["etag"]
        assert client.get(path, headers={"If-None-Match": etag}).status_code == 304, path
    for path in ("/ui/nope.js", "/ui/..%2Froutes%2Fui.py", "/ui/%2E%2E%2F__init__.py"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["status"] == 404, path
    # Counted under the route template, never one series per file name.
    assert 'route="/ui/{name}",status="404"' in client.get("/metrics").text


def test_no_file_of_the_page_reaches_outside_the_origin() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), path.name


def test_page_files_are_package_data() -> None:
    """The Docker image installs the package (not the tree): the page must travel with it."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["app"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC.parent).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


def test_ui_false_turns_the_page_off_not_the_api(model_dir: Path) -> None:
    with TestClient(create_app(test_settings(model_dir, ui=False))) as c:
        wait_ready(c)
        for path in ("/", "/ui/app.js"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["status"] == 404, path
        assert c.get("/models").status_code == 200


def test_page_is_open_with_an_api_key_and_the_api_is_not(model_dir: Path) -> None:
    """The page holds no data (as /docs); what it shows comes from the API, with the key."""
    key = "s3cret-key"
    with TestClient(create_app(test_settings(model_dir, api_key=key))) as c:
        wait_ready(c)
        assert c.get("/").status_code == 200
        assert c.get("/ui/app.js").status_code == 200
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"X-API-Key": key}).status_code == 200
