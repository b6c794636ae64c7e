"""The student's path in a real browser: JupyterLab runs the committed notebook in headless Chromium.

A JupyterLab server serves a fresh copy of the repository; Selenium drives Debian's Chromium through its
chromedriver, opens ``anil_on_omniglot.ipynb``, runs every cell from the "Run" menu with the ``smoke`` preset,
then uses the adaptation playground as a student would (keyboard on a slider handle, typing in a slider's
readout, a click on "next task") and times each redraw from the input event to the new image on the page.
Only what a student's kernel gets from its environment differs from a plain ``jupyter lab``: the preset, the data
folders and ``ANIL_REUSE_RESULTS=0``; never ``ANIL_HEADLESS``.

Needs Debian's ``chromium chromium-driver`` and ``requirements-test.txt`` (selenium); without them the test is
skipped, except under ``CI=true``, where it fails. Screenshots and the measured latencies go to ``screenshots/``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import nbformat
import pytest

from tests.test_notebook import fresh_copy
from utils.notebook_tools import NOTEBOOK

REPO = NOTEBOOK.parent
SCREENSHOTS = REPO / "screenshots"
WINDOW = (1400, 1000)
SERVER_START_S = 120
KERNEL_READY_S = 120
RUN_ALL_S = 15 * 60  # the smoke preset takes 1-3 min on a 2-core CPU; generous for a loaded CI machine
REDRAW_LIMIT_S = 1.0  # a redraw slower than this no longer feels like moving a slider
REDRAW_WAIT_S = 30.0  # how long to wait for a slow redraw, so that its latency is reported rather than lost
REQUIREMENTS = ("Debian's packages `chromium chromium-driver` (apt-get install chromium chromium-driver; .ci/run "
                "installs them) and the test requirements (pip install -r requirements-test.txt)")

# JupyterLab renders both stderr streams and error outputs with this mime type; warnings are fine, errors are not.
_STDERR = 'application/vnd.jupyter.stderr'
# A line that starts with an exception's name: the last line of every traceback, including IPython's short form
# for a SyntaxError, which has no "Traceback (most recent call last)" header. A warning's line starts with its file.
_ERROR_NAME = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)(?::|\s|$)", re.MULTILINE)
# SEVERE console entries from the widget manager fail the test. Every other SEVERE entry is printed and ignored:
# unrelated page noise such as a 404 for a favicon or a static file, or an offline machine's failed fetch of the
# Jupyter news feed. With JupyterLab 4.6.6 and ipywidgets 8.1.9 here, the run logged no SEVERE entry at all.
_WIDGET_CONSOLE = re.compile(r"widget|jupyter-widgets|Error displaying|model not found", re.IGNORECASE)


def browser_missing() -> str | None:
    """Why the browser test cannot run on this machine (``None``: chromium, chromedriver and selenium are here)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the Python package selenium")
    if not missing:
        return None
    return f"{' and '.join(missing)} not found: the browser test needs {REQUIREMENTS}."


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under ``CI=true`` fail instead, so that CI never passes without it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def error_outputs(stderr_texts: list[str]) -> list[str]:
    """The texts among stderr outputs that are errors (a traceback or an exception's name), not warnings."""
    return [text for text in stderr_texts if "Traceback (most recent call last)" in text or _ERROR_NAME.search(text)]


def widget_console_errors(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Split the browser console's SEVERE entries into widget-manager errors and other (ignored) ones.

    Returns:
        ``(widget_errors, ignored)``: the messages of each kind.
    """
    severe = [entry.get("message", "") for entry in entries if entry.get("level") == "SEVERE"]
    return ([m for m in severe if _WIDGET_CONSOLE.search(m)], [m for m in severe if not _WIDGET_CONSOLE.search(m)])


def test_browser_missing_names_the_packages_and_skips_or_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: neither chromium nor chromedriver
    reason = browser_missing()
    assert reason is not None and "chromium and chromedriver" in reason
    assert "chromium chromium-driver" in reason and "requirements-test.txt" in reason
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail(reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium chromium-driver"):
        skip_or_fail(reason)


def test_error_outputs_tells_errors_from_warnings():
    warning = "/tmp/ipykernel_1/2.py:2: UserWarning: just a warning\n  warnings.warn('just a warning')\nto stderr\n"
    traceback = ("---------------------------------------------------------------------------\nZeroDivisionError"
                 "                         Traceback (most recent call last)\nCell In[3], line 1\n----> 1 1/0\n\n"
                 "ZeroDivisionError: division by zero")
    syntax = '  Cell In[1], line 1\n    x = (\n        ^\nSyntaxError: incomplete input\n'
    qualified = "torch.OutOfMemoryError: CUDA out of memory."
    progress = "Training S1: 100%|##########| 4/4 [00:01<00:00,  3.1it/s]\n"
    assert error_outputs([warning, traceback, syntax, qualified, progress]) == [traceback, syntax, qualified]


def test_widget_console_errors_keeps_only_widget_manager_errors():
    entries = [
        {"level": "SEVERE", "message": 'Error displaying widget: model not found'},
        {"level": "SEVERE", "message": "http://127.0.0.1:1/x.js 3:4 jupyter-widgets/controls: Could not create view"},
        {"level": "SEVERE", "message": "http://127.0.0.1:1/favicon.ico - Failed to load resource: 404 (Not Found)"},
        {"level": "WARNING", "message": "widget comm closed"},
        {"level": "DEBUG", "message": "Starting WebSocket"},
    ]
    widget, ignored = widget_console_errors(entries)
    assert widget == [entries[0]["message"], entries[1]["message"]]
    assert ignored == [entries[2]["message"]]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server: its base URL, access token and log file."""

    url: str
    token: str
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (kernel errors appear there), for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


def _free_port() -> int:
    """A TCP port nobody listens on now (the server refuses to start, port_retries=0, if it is taken meanwhile)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(server: subprocess.Popen, url: str, token: str, log: Path) -> None:
    """Return once the server answers its status API; fail with its log if it exits or never answers."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text(errors='replace')[-4000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop the server and the kernels it started (its own process group), whatever state it is in."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # jupyter shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # a kernel that outlived its server
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture
def lab(tmp_path: Path, omniglot_root: Path, cache_dir: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (free port, random token, no browser) serving a fresh copy of the repository."""
    reason = browser_missing()
    if reason:
        skip_or_fail(reason)
    root = fresh_copy(tmp_path / "repo")
    env = dict(os.environ)
    env.pop("ANIL_HEADLESS", None)  # a caller's shell may hold it; a student's does not
    env.update({"ANIL_PRESET": "smoke", "OMNIGLOT_ROOT": str(omniglot_root.resolve()),
                "OMNIGLOT_CACHE": str(cache_dir), "ANIL_REUSE_RESULTS": "0"})
    port, token = _free_port(), secrets.token_urlsafe(24)
    log = tmp_path / "jupyter.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",  # CI runs as root
               "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}",
               f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]  # not the user's ~/.jupyter
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_server(server, url, token, log)
        yield Lab(url, token, log)
    finally:
        _stop(server)


@pytest.fixture
def browser(lab: Lab) -> Iterator[Any]:
    """Headless Chromium at 1400x1000 through the system chromedriver (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    # --no-sandbox: Chromium's sandbox cannot start as root (CI); /dev/shm is small in containers.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], seconds: float, what: str, lab: Lab,
          poll: float = 0.5) -> Any:
    """``condition``'s first truthy value within ``seconds``; else a screenshot and a failure with the server log."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=poll).until(condition)
    except TimeoutException:
        SCREENSHOTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "failure.png"))
        pytest.fail(f"Timed out after {seconds:.0f} s waiting for {what} (screenshot: screenshots/failure.png). "
                    f"Server log:\n{lab.log_tail()}")


def _kernel_status(driver: Any) -> str | None:
    """The notebook toolbar's kernel status (``idle``, ``busy``, ...)."""
    return driver.execute_script(
        "const e = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');"
        "return e && e.getAttribute('data-status');")


def _prompts(driver: Any) -> list[str]:
    """The input prompt of every code cell, in order: ``[12]:``, ``[*]:`` (queued or running) or ``[ ]:``."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'),"
        " e => e.textContent.trim());")


def _machine() -> str:
    """The CPU model and core count, for the latency report (the model from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE) if cpuinfo.exists() else []
    return f"{models[0] if models else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _run_all_cells(driver: Any) -> None:
    """Run > Run All Cells, with the mouse, as a student does."""
    from selenium.webdriver.common.by import By

    menu = next(item for item in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if item.text == "Run")
    menu.click()
    driver.find_element(By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]').click()


# Installed once on the playground: records the time of every user input and of every change of each image's
# src, on the page's own clock, so that a latency does not include Selenium's round trips.
_RECORDER = """
const box = arguments[0], log = {inputs: [], changes: []};
window.__playground = log;
for (const type of ['keydown', 'click']) {
  document.addEventListener(type, () => log.inputs.push(performance.now()), true);
}
box.querySelectorAll('img').forEach((img, index) => new MutationObserver(
  () => log.changes.push({index, t: performance.now(), src: img.src})).observe(img, {attributeFilter: ['src']}));
"""
# The bytes behind an image's current (blob:) URL, base64, read before ipywidgets revokes it on the next update.
_IMAGE_BYTES = """
const [img, done] = arguments;
fetch(img.src).then(r => r.blob()).then(blob => {
  const reader = new FileReader();
  reader.onload = () => done(reader.result.split(',')[1]);
  reader.readAsDataURL(blob);
}).catch(error => done('error: ' + error));
"""


@dataclass
class Redraw:
    """One user action on the playground and what it did to the predictions image."""

    action: str
    latency_s: float
    src_before: str
    src_after: str
    changed_bytes: bool


class PlaygroundPage:
    """The playground widget on the page, used through the keyboard and the mouse only."""

    def __init__(self, driver: Any, box: Any, lab: Lab) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.box, self.lab, self.by = driver, box, lab, By
        self.shots = 0
        driver.execute_script(_RECORDER, box)

    def images(self) -> list[Any]:
        """The widget's <img> elements: the predictions mosaic, then the support-loss panel."""
        return self.box.find_elements(self.by.TAG_NAME, "img")

    def control(self, label: str) -> Any:
        """The widget (slider, text box) whose description label is ``label``."""
        xpath = f".//label[normalize-space()='{label}']/ancestor::div[contains(@class,'widget-inline-hbox')][1]"
        return self.box.find_element(self.by.XPATH, xpath)

    def handle(self, label: str) -> Any:
        """The noUiSlider handle of the slider ``label`` (focusable; arrow keys and PageUp move it)."""
        return self.control(label).find_element(self.by.CSS_SELECTOR, ".noUi-handle")

    def readout(self, label: str) -> Any:
        """The editable readout next to the slider ``label``."""
        return self.control(label).find_element(self.by.CSS_SELECTOR, ".widget-readout")

    def next_button(self) -> Any:
        return self.box.find_element(self.by.XPATH, ".//button[normalize-space()='next task']")

    def image_bytes(self) -> bytes:
        encoded = self.driver.execute_async_script(_IMAGE_BYTES, self.images()[0])
        assert not encoded.startswith("error"), encoded
        return base64.b64decode(encoded)

    def screenshot(self, name: str) -> Path:
        """The whole window with the playground's top at the top of the notebook's view."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", self.box)
        SCREENSHOTS.mkdir(exist_ok=True)
        self.shots += 1
        path = SCREENSHOTS / f"playground-{self.shots:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def act(self, action: str, do: Callable[[], None]) -> Redraw:
        """Do ``action`` and measure the time from its last input event to the new predictions image."""
        src_before, bytes_before = self.images()[0].get_attribute("src"), self.image_bytes()
        self.driver.execute_script("window.__playground.inputs = []; window.__playground.changes = [];")
        do()
        first = _wait(self.driver, lambda d: next(iter(d.execute_script(
            "return window.__playground.changes.filter(c => c.index === 0);")), None),
            REDRAW_WAIT_S, f"the predictions image to change after {action}", self.lab, poll=0.01)
        inputs = [t for t in self.driver.execute_script("return window.__playground.inputs;") if t <= first["t"]]
        assert inputs, f"no input event recorded before the redraw of {action}"
        # Both images are set by one kernel handler: wait for the loss panel too before the next action.
        _wait(self.driver, lambda d: d.execute_script(
            "return window.__playground.changes.some(c => c.index === 1);"), REDRAW_WAIT_S,
            f"the support-loss panel to change after {action}", self.lab, poll=0.05)
        self.screenshot(re.sub(r"\W+", "-", action).strip("-"))
        return Redraw(action, (first["t"] - max(inputs)) / 1000, src_before, first["src"],
                      self.image_bytes() != bytes_before)


def _type_in_readout(driver: Any, readout: Any, value: str) -> None:
    """Select the readout's text, type ``value`` and press Enter, as a student edits the number by a slider."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    readout.click()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(value).perform()
    ActionChains(driver).send_keys(Keys.ENTER).perform()


@pytest.mark.slow
@pytest.mark.browser
def test_notebook_runs_in_jupyterlab_and_the_playground_responds(lab, browser):
    """Open the committed notebook in JupyterLab, Run All Cells, then move the playground's controls."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, started = browser, time.monotonic()
    code_cells = sum(cell.cell_type == "code" for cell in nbformat.read(NOTEBOOK, as_version=4).cells)
    driver.get(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    _wait(driver, lambda d: len(_prompts(d)) == code_cells and _kernel_status(d) == "idle", KERNEL_READY_S,
          "the notebook to open with an idle kernel", lab)
    _run_all_cells(driver)
    _wait(driver, lambda d: "[*]:" in _prompts(d), 30, "Run All Cells to queue the cells", lab, poll=0.1)
    _wait(driver, lambda d: _kernel_status(d) == "idle" and all(re.fullmatch(r"\[\d+\]:", p) for p in _prompts(d)),
          RUN_ALL_S, "every cell to run (no [*] left) and the kernel to be idle", lab, poll=1.0)
    run_all_s = time.monotonic() - started
    assert _prompts(driver) == [f"[{n}]:" for n in range(1, code_cells + 1)]  # one fresh kernel, top to bottom

    stderr = driver.execute_script(
        f"return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"{_STDERR}\"]'),"
        " e => e.textContent);")
    assert error_outputs(stderr) == [], "error outputs on the page:\n" + "\n\n".join(error_outputs(stderr))
    notebook_text = driver.execute_script("return document.querySelector('.jp-Notebook').textContent;")
    assert "Error displaying widget" not in notebook_text

    # The playground: one live widget with all its controls and both images.
    boxes = driver.find_elements(
        By.XPATH, "//button[normalize-space()='next task']/ancestor::div[contains(@class,'widget-vbox')][1]")
    assert len(boxes) == 1, f"expected one live playground widget, found {len(boxes)}"
    page = PlaygroundPage(driver, boxes[0], lab)
    labels = [e.text for e in boxes[0].find_elements(By.CSS_SELECTOR, "label.widget-label")]
    assert labels == ["scenario", "test task", "inner steps", "inner lr", "k_shot"]
    assert len(boxes[0].find_elements(By.CSS_SELECTOR, ".noUi-handle")) == 3  # inner steps, inner lr, k_shot
    assert len(page.images()) == 2 and all(img.get_attribute("src") for img in page.images())
    page.screenshot("initial")
    # Within the notebook's width: each image inside its output area, and no horizontal scrollbar.
    overflow = driver.execute_script("""
        const box = arguments[0], area = box.closest('.jp-OutputArea-output').getBoundingClientRect();
        const images = Array.from(box.querySelectorAll('img'), i => i.getBoundingClientRect().right - area.right);
        const scroller = box.closest('.jp-WindowedPanel-outer') || document.scrollingElement;
        return {images, scroll: scroller.scrollWidth - scroller.clientWidth};""", boxes[0])
    assert max(overflow["images"]) <= 1 and overflow["scroll"] <= 1, overflow

    steps = page.readout("inner steps").text
    redraws = [page.act("inner steps ArrowRight", lambda: page.handle("inner steps").send_keys(Keys.ARROW_RIGHT))]
    assert int(page.readout("inner steps").text) == int(steps) + 1  # what the student sees by the slider
    redraws.append(page.act("inner steps PageUp", lambda: page.handle("inner steps").send_keys(Keys.PAGE_UP)))
    for value in ("0.05", "3"):
        redraws.append(page.act(f"inner lr typed {value}",
                                lambda v=value: _type_in_readout(driver, page.readout("inner lr"), v)))
        assert float(page.readout("inner lr").text) == pytest.approx(float(value), rel=0.07)  # log-slider step
    for click in ("first", "second"):
        redraws.append(page.act(f"next task {click} click", lambda: page.next_button().click()))
    assert page.control("test task").find_element(By.TAG_NAME, "input").get_attribute("value") == "2"

    latencies = [round(r.latency_s, 4) for r in redraws]
    median = round(statistics.median(latencies), 4)
    report = {"redraws": [{"action": r.action, "latency_s": round(r.latency_s, 4)} for r in redraws],
              "median_s": median, "limit_s": REDRAW_LIMIT_S, "run_all_s": round(run_all_s, 1),
              "machine": _machine()}
    (SCREENSHOTS / "redraw_latencies.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nRun All Cells: {run_all_s:.0f} s; redraw latencies (s): {latencies}, median {median:.3f}")

    for redraw in redraws:
        assert redraw.src_after != redraw.src_before and redraw.changed_bytes, f"{redraw.action} left the image"
    assert all(r.latency_s < REDRAW_LIMIT_S for r in redraws), f"redraws slower than {REDRAW_LIMIT_S} s: {report}"

    widget_errors, ignored = widget_console_errors(driver.get_log("browser"))
    if ignored:
        print("Ignored SEVERE console entries (not from the widget manager):", *ignored, sep="\n  ")
    assert widget_errors == [], "widget manager errors in the browser console:\n" + "\n".join(widget_errors)
