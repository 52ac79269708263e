"""The course opens in JupyterLab: ``jupyter lab notebooks/``, as the README says.

Starts the project's own JupyterLab (no browser, a free loopback port, a
token), and asks it what a browser would: the lab page for each lesson, each
notebook through the contents API (valid nbformat, trusted-independent), and
the installed front-end extensions, which must include the ipywidgets manager
so that the sliders render.  The server is stopped at the end, whatever
happens; the whole test is bounded to about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TOKEN = "course-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists() and shutil.which("jupyter") is None:
        pytest.skip("jupyter is not installed in this environment")
    port = _free_port()
    home = tmp_path_factory.mktemp("jupyter-home")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(home)}
    proc = subprocess.Popen(
        [str(jupyter) if jupyter.exists() else "jupyter", "lab", "--no-browser",
         "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ROOT}",
         "--ServerApp.open_browser=False",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError("jupyter lab exited: " + proc.stderr.read().decode()[-2000:])
            try:
                if _get(base + "/api/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("jupyter lab did not answer within 60 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_widgets_extension_is_installed(lab: str) -> None:
    status, body = _get(lab + "/lab/api/extensions")
    assert status == 200
    # the API lists the package names with '@' and '/' turned into '-'
    found = {ext.get("name"): ext for ext in json.loads(body)}
    manager = found.get("jupyter-widgets-jupyterlab-manager")
    assert manager is not None, sorted(n for n in found if n)
    assert manager.get("enabled", True) and manager.get("installed", True), manager


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lesson_opens(lab: str, path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    status, page = _get(f"{lab}/lab/tree/{rel}")
    assert status == 200 and b"JupyterLab" in page
    status, body = _get(f"{lab}/api/contents/{rel}?content=1&type=notebook")
    assert status == 200, body[:300]
    model = json.loads(body)
    nb = nbformat.from_dict(model["content"])
    nbformat.validate(nb)  # what the front end loads is a valid v4 notebook
    assert model["type"] == "notebook" and nb.cells
