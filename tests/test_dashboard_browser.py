"""The study dashboard (``dashboard.html``) in a real headless browser: Debian's chromium, driven by Selenium.

A known results table (:func:`synthetic_records`, deterministic) and fine-tunes of its parents are
rendered; the page is opened from
disk (``file://``) and read back through Plotly's own data on the page (``gd.data`` of each
``.js-plotly-plot``): no console errors, no network request, each view with the expected number of runs,
the frontier drawn, a filter changing what is shown (plots and table), and a screenshot.

The session-scoped ``chromium`` fixture installs ``chromium`` and ``chromium-driver`` with apt when they
are missing (as ``slurm_cluster`` installs SLURM); the tests are skipped, saying why, only when that is
impossible here (no apt-get, not root, apt failing).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixer_scaling.analysis.dashboard import DASHBOARD_FILE
from mixer_scaling.analysis.figures import render
from mixer_scaling.analysis.results import clean_table, done_runs, row_from_record, synthetic_records, to_frame

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 900
_BROWSERS = ("chromium", "chromium-browser")
_DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def _which(names) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) executables; installed with apt (once, serialized) when missing."""
    browser, driver = _which(_BROWSERS), _which(_DRIVERS)
    if browser and driver:
        return browser, driver
    if not shutil.which("apt-get"):
        pytest.skip("chromium/chromedriver are missing and apt-get is not available to install them")
    if os.geteuid() != 0:
        pytest.skip("chromium/chromedriver are missing and installing them with apt needs root")
    # one install at a time (pytest-xdist workers, parallel CI steps)
    with open(Path(tempfile.gettempdir()) / "mixer-scaling-chromium-install.lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        if not (_which(_BROWSERS) and _which(_DRIVERS)):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                                 "chromium", "chromium-driver"]):
                try:
                    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pytest.skip(f"`{' '.join(cmd)}` did not finish in {INSTALL_TIMEOUT_S} s")
                if proc.returncode != 0:
                    pytest.skip(f"cannot install chromium: `{' '.join(cmd)}` failed: "
                                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    browser, driver = _which(_BROWSERS), _which(_DRIVERS)
    if not (browser and driver):
        pytest.skip("apt installed chromium but chromium/chromedriver are still not on PATH")
    return browser, driver


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2600", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _finetunes(table: pd.DataFrame) -> pd.DataFrame:
    """A fine-tuned table as :func:`collect_finetunes` shapes it (each row its parent's, with the fine-tune's
    own run id, status and top-1, ``parent_run_id`` and ``finetune.*``): two learning rates for every
    finished seed-0 parent, the second of the first parent failed (in no view)."""
    parents = done_runs(clean_table(table)[0])
    parents = parents[parents["seed"] == 0]
    rows = []
    for i, (_, parent) in enumerate(parents.iterrows()):
        for j, lr in enumerate((0.003, 0.01)):
            row = parent.to_dict()
            row.update({"run_id": f"{parent['run_id']}-ft{j}", "parent_run_id": parent["run_id"],
                        "finetune.train.lr": lr, "finetune.data.image_size": 64,
                        "val_top1": min(1.0, parent["val_top1"] + 0.05 * (j + 1)),
                        "select_top1": min(1.0, parent["val_top1"] + 0.04 * (j + 1)),
                        "status": "failed" if (i, j) == (0, 1) else "done"})
            rows.append(row)
    return pd.DataFrame(rows)


def _expected(table: pd.DataFrame, ft: pd.DataFrame) -> dict:
    """What each view should draw: finished runs with a finite positive x and a finite y."""
    done = done_runs(clean_table(table)[0])
    ft_done = ft[ft["status"] == "done"]

    def count(x, y, where=slice(None)):
        d = done.loc[where]
        xs, ys = pd.to_numeric(d[x], errors="coerce"), pd.to_numeric(d[y], errors="coerce")
        return int((np.isfinite(xs) & (xs > 0) & np.isfinite(ys)).sum())

    vit = done["family"] == "vit"
    views = [("pretrain_flops", "val_top1"), ("throughput", "val_top1"), ("train_size", "fewshot_digits_5")]
    return {"all": [count(x, y) for x, y in views] + [len(ft_done)],
            "no_vit": [count(x, y, ~vit) for x, y in views] + [int((ft_done["family"] != "vit").sum())],
            "runs": len(table), "no_vit_runs": int((table["family"] != "vit").sum()),
            "ids": set(done["run_id"]), "ft_ids": set(ft_done["run_id"])}


_COUNTS = """return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const n = role => gd.data.filter(t => t.meta && t.meta.role === role).reduce((s, t) => s + t.x.length, 0);
  return {runs: n('runs'), frontier: n('frontier'), mean: n('mean'),
          text: [].concat(...gd.data.filter(t => t.meta && t.meta.role === 'runs').map(t => t.text))};
});"""
_ROWS = "return Array.from(document.querySelectorAll('#results tbody tr')).filter(r => r.style.display !== 'none').length"


def test_the_dashboard_works_offline_in_a_real_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # 7 models × 4 fractions × 3 seeds, some failed (in the table, never drawn)
    table = to_frame([row_from_record(r) for r in synthetic_records(84, seed=3, statuses={"failed": 0.1})])
    ft = _finetunes(table)
    out = render(table, tmp_path / "figs", n_boot=10, finetunes=ft)
    page = out.dashboard
    assert page == tmp_path / "figs" / DASHBOARD_FILE and page.is_file()
    html = page.read_text()
    assert "<script src=" not in html and 'rel="stylesheet"' not in html  # everything inlined
    want = _expected(table, ft)
    assert 0 < want["no_vit"][0] < want["all"][0] and want["runs"] > len(want["ids"])
    assert 0 < want["no_vit"][3] < want["all"][3] < len(ft)

    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.querySelectorAll('.js-plotly-plot').length") == 4)
    views = browser.execute_script(_COUNTS)
    assert [v["runs"] for v in views] == want["all"]
    assert views[0]["frontier"] > 0 and views[1]["frontier"] > 0 and views[2]["mean"] > 0 and views[3]["frontier"] > 0
    for v, ids in zip(views, [want["ids"]] * 3 + [want["ft_ids"]]):  # each hover names its run, model, fraction, seed
        assert {t.split("<b>")[1].split("</b>")[0] for t in v["text"]} <= ids
        assert all("model " in t and "fraction " in t and "seed " in t for t in v["text"])
    # a fine-tune's hover names its parent and its setting of the grid (lr), not the constant resolution
    assert all("parent <b>" in t and "train.lr " in t and "image_size" not in t for t in views[3]["text"])
    fine = browser.execute_script("return document.querySelectorAll('.js-plotly-plot')[3].layout.xaxis.title.text")
    assert fine.startswith("parent's ")
    assert browser.execute_script(_ROWS) == want["runs"]
    assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot')[0].layout.xaxis.type") == "log"

    # a filter: untick ViT; its points leave every view (and the frontiers are recomputed), its rows the table
    browser.find_element(By.CSS_SELECTOR, 'fieldset[data-key="family"] input[value="vit"]').click()
    WebDriverWait(browser, 30).until(lambda d: [v["runs"] for v in d.execute_script(_COUNTS)] == want["no_vit"])
    assert browser.execute_script(_ROWS) == want["no_vit_runs"]
    assert "of %d runs shown" % want["runs"] in browser.find_element(By.ID, "shown").text

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # nothing fetched from anywhere (the page works offline) and nothing logged as an error
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith(("data:", "blob:"))] == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
