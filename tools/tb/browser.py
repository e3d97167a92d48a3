"""TensorBoard in a headless Chromium: serve a log folder, list its cards, take a screenshot of each tab.

    taken = take(Path("runs/rmb_lenet_1"), Path("/tmp/shots"))   # {"tab": path, ...}
"""
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tools.cli.errors import UserError
from tools.cli.output_folder import OutputFolder

TABS = {"timeseries": "#timeseries", "custom_scalars": "#custom_scalars", "images": "#images",
        "histograms": "#histograms", "text": "#text", "hparams": "#hparams"}
WINDOW = (1400, 1000)   # pixels: a laptop's browser window
START_TIMEOUT = 60      # seconds for TensorBoard to serve the run
RENDER_BUDGET = 30_000  # ms of virtual time Chromium gives the page before the screenshot


def chromium() -> str | None:
    """The Chromium executable, or None."""
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def serve(logdir: Path) -> tuple[subprocess.Popen, str]:
    """TensorBoard on `logdir`, on a free local port, once it serves every run's scalars. A port taken
    between choosing and binding it (another process) is retried on another one."""
    for _ in range(5):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                                   "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline and server.poll() is None:
            try:
                if get_json(f"{base}/data/plugin/scalars/tags"):
                    return server, base
            except OSError:
                pass
            time.sleep(0.3)
        server.terminate()
        server.wait(timeout=30)
    raise RuntimeError(f"TensorBoard did not serve {logdir}")


def cards(base: str) -> dict:
    """What the Time Series tab shows, from TensorBoard's HTTP API: {'runs', 'scalars', 'images',
    'histograms': sorted tags (a card each; a tag's runs are lines of one card)}."""
    found = {"runs": set()}
    for kind in ("scalars", "images", "histograms"):
        tags = get_json(f"{base}/data/plugin/{kind}/tags")
        found["runs"] |= set(tags)
        found[kind] = sorted({tag for run_tags in tags.values() for tag in run_tags})
    found["runs"] = sorted(found["runs"])
    return found


def screenshot(browser: str, url: str, path: Path) -> Path:
    """A headless Chromium screenshot of `url`, in a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="chromium_") as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars", "--disable-3d-apis",
                        f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={RENDER_BUDGET}",
                        f"--screenshot={path}", url], check=True, capture_output=True, timeout=120)
    return path


def take(logdir: Path, out_dir: Path) -> dict:
    """Serve `logdir`, screenshot each tab into out_dir, count the cards. Returns {'pngs', 'cards'}."""
    out = OutputFolder(out_dir, "--out")
    out.claim([f"{tab}.png" for tab in TABS])  # never over a file it did not write
    browser = chromium()
    if browser is None:
        raise UserError("no Chromium here: install it (Debian: apt-get install chromium)")
    out_dir.mkdir(parents=True, exist_ok=True)
    server, base = serve(logdir)
    try:
        found = cards(base)
        pngs = {tab: screenshot(browser, f"{base}/{fragment}", out_dir / f"{tab}.png") for tab, fragment in TABS.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)
    out.done([f"{tab}.png" for tab in TABS])
    return {"pngs": pngs, "cards": found}
