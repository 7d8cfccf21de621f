"""The Prefect UI's custom-run form, used in a real browser the way a person uses it.

Headless Chromium (Debian's `chromium` + `chromium-driver`, which `.ci/run` installs) driven by
Selenium, against a real `prefect server` with the README's work pool and `prefect deploy`.
The findings it guards: the form sent every field and each was logged as a change; JSON mode
showed `{"__prefect_kind": "json"}` for the weights and refused to submit what it showed; a bad
value typed in JSON mode was a wall dumping the whole object, never naming the field.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import (
    Shell,
    checkout_copy,
    edit_run_defaults,
    free_port,
    readme_blocks,
)
from support import query

pytestmark = pytest.mark.slow

#: `.ci/run` sets this: there the browser is installed, so its absence is a failure, not a skip.
REQUIRE = "RECFUSION_REQUIRE_BROWSER"


def _need(what: str) -> None:
    if os.environ.get(REQUIRE):
        pytest.fail(f"{what}, and {REQUIRE} is set")
    pytest.skip(f"{what} (apt install chromium chromium-driver; pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium is not installed")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        _need("chromium or chromedriver is not on PATH")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1400"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.implicitly_wait(20)
    try:
        yield chrome
    finally:
        chrome.quit()


class Server:
    """A `prefect server` with the nightly deployed from a checkout, and its REST API."""

    def __init__(self, shell: Shell, db: Path) -> None:
        self.shell, self.db = shell, db
        self.url = f"http://127.0.0.1:{shell.port}"

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api{path}", method="GET" if body is None else "POST",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def deployment_id(self) -> str:
        [found] = [d["id"] for d in self.api("/deployments/filter", {})
                   if d["name"] == "nightly"]
        return str(found)

    def flow_runs(self) -> list[dict[str, Any]]:
        """The runs someone triggered (the schedule's own runs left out), oldest first."""
        runs = self.api("/flow_runs/filter", {
            "deployments": {"id": {"any_": [self.deployment_id()]}},
            "sort": "EXPECTED_START_TIME_ASC",
        })
        return [run for run in runs if not run["auto_scheduled"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_source: Path) -> Iterator[Server]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README waits for the server with curl")
    root = tmp_path_factory.mktemp("form")
    db = root / "srv" / "recfusion.duckdb"
    db.parent.mkdir()
    checkout = checkout_copy(root / "recfusion")
    edit_run_defaults(checkout, small_source, db)
    shell = Shell(checkout, root / "prefect-home", free_port())
    route, _ = readme_blocks()
    try:
        for line in route[:-1]:  # all but the worker, which runs after the clicks
            shell.run(line, 300)
        yield Server(shell, db)
    finally:
        shell.stop()


def _wait(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"not within {seconds:.0f} s: {what}")


def _open_form(browser: Any, server: Server) -> None:
    browser.get(f"{server.url}/deployments/deployment/{server.deployment_id()}/run")
    _field(browser, "Top K")  # the form has rendered


def _field(browser: Any, label: str) -> Any:
    from selenium.webdriver.common.by import By

    prop = browser.find_element(
        By.XPATH,
        f"//span[@class='schema-form-property__label' and "
        f"starts-with(normalize-space(.), '{label}')]"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]",
    )
    return prop.find_element(By.XPATH, ".//input")


def _submit(browser: Any) -> None:
    """Click Submit once the button takes clicks (on a loaded machine the form may still be
    binding the last edit when the button appears)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button = (By.XPATH, "//button[normalize-space(.)='Submit']")
    WebDriverWait(browser, 20).until(expected_conditions.element_to_be_clickable(button)).click()


def _wait_for_runs(browser: Any, server: Server, n: int, what: str) -> None:
    """`n` triggered runs, or a failure saying where the browser was and what it showed."""
    deadline = time.monotonic() + 60  # a loaded 2-core machine: the UI, the API and the tests
    while time.monotonic() < deadline:
        if len(server.flow_runs()) == n:
            return
        time.sleep(0.5)
    text = " ".join(browser.find_element("tag name", "body").text.split())[:600]
    pytest.fail(f"not within 60 s: {what}; the browser is at {browser.current_url}: {text}")


def _json_mode(browser: Any) -> Any:
    """Switch the parameters to JSON input; the editor's textarea."""
    from selenium.webdriver.common.by import By

    browser.find_element(
        By.XPATH, "//h3[normalize-space(.)='Parameters']/following-sibling::div//button"
    ).click()
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Use JSON input']").click()
    return browser.find_elements(By.XPATH, "//textarea")[-1]


def _type_json(browser: Any, editor: Any, value: dict[str, Any]) -> None:
    # What typing or pasting does, at once: the editor listens to input events.
    browser.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        editor, json.dumps(value, indent=2),
    )


def test_the_form_and_its_json_mode_start_runs_that_name_only_what_the_person_changed(
    browser: Any, server: Server
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # 1. The form: change only K, submit.
    _open_form(browser, server)
    top_k = _field(browser, "Top K")
    top_k.send_keys(Keys.CONTROL, "a")
    top_k.send_keys("4")
    _wait(lambda: top_k.get_attribute("value") == "4", 10, "Top K showing the 4 typed")
    _submit(browser)
    _wait_for_runs(browser, server, 1, "a flow run from the form")
    form_params = server.flow_runs()[0]["parameters"]["params"]
    assert form_params["top_k"] == 4
    assert "__prefect_kind" not in json.dumps(form_params)  # plain JSON, weights as rows

    # 2. JSON mode shows the parameters as JSON; they go in as shown, with K edited to 6.
    _open_form(browser, server)
    editor = _json_mode(browser)
    shown = json.loads(editor.get_attribute("value"))
    assert "__prefect_kind" not in json.dumps(shown)
    shown["params"]["top_k"] = 6
    _type_json(browser, editor, shown)
    _submit(browser)
    _wait_for_runs(browser, server, 2, "a flow run from JSON mode")

    # 3. A bad value in JSON mode is named by its field, and starts nothing.
    _open_form(browser, server)
    editor = _json_mode(browser)
    bad = json.loads(editor.get_attribute("value"))
    bad["params"]["fusion"]["strategy"] = "nonsense"
    _type_json(browser, editor, bad)
    _submit(browser)
    # The form lists an error as nested items: params, then fusion, then strategy, then why.
    named = ("//ul[contains(@class, 'schema-form-property-errors')]//li[span='params']"
             "//li[span='fusion']//li[span='strategy']//li[contains(., \"'nonsense'\")]")
    [why] = _wait(lambda: browser.find_elements(By.XPATH, named), 20,
                  "the error naming params › fusion › strategy")
    assert "is not one of ['auto', 'weighted'" in why.text
    assert "is not valid under any of the given schemas" not in browser.page_source
    time.sleep(2)
    assert len(server.flow_runs()) == 2  # nothing started

    # 4. A worker runs both: each published its K and names only K as the trigger's change.
    server.shell.run("prefect worker start --pool recfusion --run-once --limit 2", 900)
    rows = sorted(query(server.db, "SELECT status, trigger_overrides, run_id FROM runs"),
                  key=lambda row: json.loads(row[1] or "{}").get("top_k", 0))
    assert [(s, json.loads(o)) for s, o, _ in rows] == [
        ("published", {"top_k": 4}), ("published", {"top_k": 6})
    ], "\n".join(server.shell.transcript[-1:])
    for (_, _, run_id), k in zip(rows, (4, 6), strict=True):
        assert query(server.db, "SELECT max(rank) FROM recommendations WHERE run_id = "
                                f"'{run_id}'") == [(k,)]
