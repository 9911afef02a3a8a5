"""A headless CPU ComfyUI server with this pack for host tests (started and stopped by the tests)."""
import contextlib
import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import comfy_bootstrap

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_FOLDER = "ComfyUI-DiffEditor"
STARTUP_TIMEOUT = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post_json(url, payload, timeout=10):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def running_server(base: pathlib.Path, checkpoint: pathlib.Path, frontend: bool = False,
                   settings: dict | None = None):
    """Start ``main.py --cpu`` with the pack (and the test-only nodes) under ``base``; yields a dict with
    ``url``, ``info`` (/object_info), ``log``, ``ckpt`` (checkpoint name) and ``base``.

    ``frontend``: serve the real front end (the installed ``comfyui-frontend-package``) instead of an empty
    folder; ``settings``: the default user's front-end settings (``user/default/comfy.settings.json``)."""
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(PACK_ROOT, target_is_directory=True)
    (base / "custom_nodes" / "diffeditor_testing_nodes").symlink_to(
        pathlib.Path(__file__).resolve().parent / "testing_nodes", target_is_directory=True)
    (base / "checkpoints").mkdir()
    (base / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    for d in ("frontend", "out", "temp", "input", "user"):
        (base / d).mkdir()
    if settings is not None:
        (base / "user" / "default").mkdir(parents=True)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"diffeditor_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n"
                    f"    checkpoints: checkpoints\n")
    port = free_port()
    root = comfy_bootstrap.comfy_root()
    log_path = base / "server.log"
    front = [] if frontend else ["--front-end-root", str(base / "frontend")]
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), *front,
           "--disable-api-nodes",
           "--extra-model-paths-config", str(yaml), "--output-directory", str(base / "out"),
           "--temp-directory", str(base / "temp"), "--input-directory", str(base / "input"),
           "--user-directory", str(base / "user"), "--database-url", "sqlite:///:memory:",
           "--preview-method", "none", "--disable-auto-launch"]
    log = open(log_path, "w")
    env = comfy_bootstrap.subprocess_env()
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny checkpoint; avoids oversubscription on a shared CPU
    proc = subprocess.Popen(cmd, cwd=str(root), stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                info = get_json(url + "/object_info", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() - t0 > STARTUP_TIMEOUT:
                    raise RuntimeError(f"ComfyUI did not start in {STARTUP_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        yield {"url": url, "info": info, "log": log_path, "ckpt": checkpoint.name, "base": base}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()




def run_prompt(server, graph, timeout=120):
    status, body = post_json(server["url"] + "/prompt", {"prompt": graph, "client_id": "diffeditor-test"})
    if status != 200:
        raise AssertionError(body)
    pid = body["prompt_id"]
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = get_json(f"{server['url']}/history/{pid}")
        if pid in hist and hist[pid]["status"].get("completed") is not None and (
                hist[pid]["status"]["completed"] or hist[pid]["status"]["status_str"] == "error"):
            return hist[pid]
        time.sleep(0.25)
    raise AssertionError(f"prompt did not finish in {timeout}s:\n{server['log'].read_text()[-3000:]}")


