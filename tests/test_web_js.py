"""The front-end extension: its JavaScript unit tests (Node's built-in runner) and its packaging.

``npm test`` runs the same tests; they need Node.js 20+ and nothing from the npm registry (plain ES modules,
no build step: ComfyUI serves ``web/`` as it is).
"""
import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEB = ROOT / "web"


def _node_major():
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"v(\d+)", out.strip())
    return int(m.group(1)) if m else None


def test_javascript_unit_tests():
    major = _node_major()
    if major is None:
        pytest.skip("Node.js is not installed: the JavaScript unit tests (tests/js, `npm test`) did not run")
    assert major >= 20, f"Node.js 20+ is needed for `node --test`, found {major}"
    r = subprocess.run(["node", "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert re.search(r"# fail 0", r.stdout), r.stdout[-3000:]


def test_web_directory_is_declared_and_holds_only_the_extension():
    """ComfyUI imports every .js under WEB_DIRECTORY as an extension: only browser modules may live there."""
    text = (ROOT / "__init__.py").read_text()
    assert re.search(r'^WEB_DIRECTORY = "\./web"$', text, re.M)
    files = sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".js")] == [
        "js/canvas_editor.js", "js/canvas_geometry.js", "js/diffeditor_canvas.js"], files
    assert not [f for f in files if f.endswith((".json", ".ts", ".mjs", ".cjs"))], files


def test_extension_uses_only_the_public_api():
    """No patching of LiteGraph prototypes, the app or globals; ComfyUI modules through their /scripts shims."""
    for path in WEB.rglob("*.js"):
        src = path.read_text()
        assert ".prototype" not in src, f"{path.name}: touches a prototype"
        assert not re.search(r"\bwindow\.\w+\s*=", src), f"{path.name}: assigns a global"
        assert not re.search(r"\bLiteGraph\.\w+\s*=", src), f"{path.name}: patches LiteGraph"
        assert not re.search(r"\bapp\.\w+\s*=", src), f"{path.name}: patches the app"
        for spec in re.findall(r'^import .* from "([^"]+)";$', src, re.M):
            assert spec.startswith("./") or spec in ("../../../scripts/app.js", "../../../scripts/api.js"), spec
    pure = (WEB / "js" / "canvas_geometry.js").read_text() + (WEB / "js" / "canvas_editor.js").read_text()
    assert "scripts/app.js" not in pure and "scripts/api.js" not in pure, "the editor modules stay host-free"


def test_package_json_needs_nothing_from_the_registry():
    pkg = json.loads((ROOT / "package.json").read_text())
    assert pkg["type"] == "module" and pkg["scripts"]["test"] == "node --test tests/js/"
    assert not pkg.get("dependencies") and not pkg.get("devDependencies")
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert set(lock["packages"]) == {""}, "the lockfile pins no packages"
