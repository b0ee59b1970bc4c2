"""Omniboard on the real embedded server, driven by headless Chromium: the run list shows
the runs and their key numbers, a run's detail shows the metric plot, config and
artifacts; Omniboard listens on 127.0.0.1 only; and the run list of 300 runs loads fast.

Screenshots go to ``$PGFA_SCREENSHOT_DIR`` (default: the test's temporary folder)."""
import copy
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
from bson import ObjectId

from chromedriver_client import Browser
from experiments import omniboard as board
from experiments.observers import Target
from tracking_support import database, needs_browser, needs_omniboard, needs_server

pytestmark = [needs_server, needs_omniboard, pytest.mark.slow]


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("PGFA_SCREENSHOT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def omniboard_for(two_cli_runs, monkeypatch):
    """Start Omniboard on a database of the recorded runs' server; stopped afterwards."""
    monkeypatch.setenv("PGFA_TRACKING_DIR", str(two_cli_runs["tracking"]))  # its log goes there
    started = []

    def start(db_name: str = "pgfa"):
        target = Target(two_cli_runs["info"].url, db_name, embedded=True)
        board.ensure_columns(database(target.url, db_name))
        proc, url = board.start(target, port=free_http_port())
        started.append(proc)
        return url

    yield start
    for proc in started:
        board.stop(proc)


def free_http_port() -> int:
    from tracking_support import free_port

    return free_port()


def listeners(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


def test_omniboard_listens_on_127_0_0_1_only(omniboard_for):
    url = omniboard_for()
    port = int(url.rsplit(":", 1)[1].strip("/"))
    assert listeners(port) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0 or ::
    with urllib.request.urlopen(url + "sacred/api/v1/Runs/count", timeout=30) as resp:
        assert json.loads(resp.read())["count"] == 2


def show_key_columns_first(browser: Browser) -> None:
    """What a user does once with drag and drop and Show/Hide Columns (Omniboard keeps the
    layout in the browser's localStorage): the key numbers next to the status, most of the
    60 config columns hidden."""
    browser.script("""
        const key = Object.keys(localStorage).find(k => k.endsWith('|RunsTable|1'));
        const s = JSON.parse(localStorage.getItem(key));
        const first = ['_id', 'status', 'best_val_top1', 'unseen_top1', 'unseen_top1_aligned', 'epochs',
                       'c_dataset', 'c_split', 'c_seed', 'start_time'];
        s.columnOrder = first.concat(s.columnOrder.filter(c => !first.includes(c)));
        s.dropdownOptions.forEach(o => { o.selected = first.includes(o.value); });
        localStorage.setItem(key, JSON.stringify(s));""")


@needs_browser
def test_browser_run_list_and_run_detail(two_cli_runs, omniboard_for, shots):
    url = omniboard_for()
    db = database(two_cli_runs["info"].url)
    runs = {d["_id"]: d for d in db.runs.find()}
    browser = Browser()
    try:
        browser.get(url)
        browser.wait_for("return document.body.innerText.includes('2 experiments')", 60, "the run list")
        show_key_columns_first(browser)
        browser.get(url)
        browser.wait_for("return document.querySelectorAll('[test-attr=\"header-best_val_top1\"]').length > 0",
                         60, "the summary columns")
        time.sleep(1)
        text = browser.script("return document.body.innerText")
        browser.screenshot(shots / "01-run-list.png")
        for run_id, doc in runs.items():
            assert re.search(rf"\b{run_id}\b", text)
            for key in ("best_val_top1", "unseen_top1", "unseen_top1_aligned"):
                assert f"{doc['info']['summary'][key]:g}" in text, key
        assert text.count("COMPLETED") == 2
        for header in ("Best Val Top1", "Unseen Top1", "Unseen Top1 Aligned"):
            assert header in text

        # a run's detail: metric plot, config, artifacts
        browser.click(browser.find_all("[test-attr='cell-row_expander-0']")[0])
        browser.wait_for("return document.querySelectorAll('#metrics .main-svg').length > 0", 60, "the metric plot")
        time.sleep(1)
        plot = browser.script("return document.querySelector('#metrics').innerText")
        for metric in ("val_top1", "train_loss", "unseen_top1_monitor", "unseen_top1_aligned_monitor"):
            assert metric in plot
        assert browser.script("return document.querySelectorAll('#metrics path.js-line').length") >= 7
        browser.screenshot(shots / "02-run-metrics.png")

        open_tab(browser, "Config")
        browser.wait_for("return document.querySelector('.tab-content').innerText.includes('support_factor')",
                         30, "the config")
        config_text = browser.script("return document.querySelector('.tab-content').innerText")
        assert "mongo_url" in config_text and "minilm" in config_text
        browser.screenshot(shots / "03-run-config.png")

        open_tab(browser, "Artifacts")
        browser.wait_for("return document.querySelector('.tab-content').innerText.includes('embedding_2d.png')",
                         30, "the artifacts")
        art_text = browser.script("return document.querySelector('.tab-content').innerText")
        for name in ("best.pt", "unseen_confusion.png", "unseen_per_class.csv", "embedding_2d.png"):
            assert name in art_text
        browser.screenshot(shots / "04-run-artifacts.png")
    finally:
        browser.close()


def open_tab(browser: Browser, label: str) -> None:
    for el in browser.find_all("#sidebar a"):
        if browser.text(el).strip() == label:
            browser.click(el)
            return
    raise AssertionError(f"no tab {label!r} in the run detail")
