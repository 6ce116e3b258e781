"""The playground in a real browser: headless Chromium driven by Selenium, against
`orbiter-asgi serve` on 127.0.0.1.

Needs Debian's `chromium` and `chromium-driver`. Skipped without them, except
under CI (`$CI` set), where a missing browser fails. On a failure the page is
saved as a screenshot in the temp dir. `ORBITER_PLAYGROUND_SCREENSHOT=path`
saves a conversation there (docs/playground.png is made so).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.servers import running_server

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
APP = str(Path(__file__).parent / "apps" / "playground_app.py") + ":agents"

T = TypeVar("T")


def _need_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        needed = ", ".join(missing)
        message = f"the playground browser tests need {needed} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    _need_browser()
    with running_server([APP, "--store", "memory://"]) as url:
        yield url


@pytest.fixture
def driver(request: pytest.FixtureRequest, server: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,720"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    failed = request.session.testsfailed
    try:
        yield browser
        if request.session.testsfailed == failed:  # the test passed: its page logged no error
            severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            assert not severe, severe
    finally:
        if request.session.testsfailed != failed:
            shot = Path(tempfile.gettempdir()) / f"orbiter-playground-{request.node.name}.png"
            browser.save_screenshot(str(shot))
            print(f"screenshot of the failure: {shot}")
        browser.quit()


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(interval)


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def answers(driver: Any) -> list[dict[str, str]]:
    """Each assistant message: its text (without tool cards or status), state and run id."""
    return js(
        driver,
        """return [...document.querySelectorAll('.msg.assistant')].map((m) => ({
             text: [...m.querySelectorAll(':scope > .text')].map((t) => t.textContent).join(''),
             state: m.dataset.state, run: m.dataset.run || ''}));""",
    )


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_for(lambda: js(driver, "return document.getElementById('agent').options.length") == 3)


def say(driver: Any, agent: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "agent")).select_by_value(agent)
    driver.find_element(By.ID, "input").send_keys(text)
    driver.find_element(By.ID, "send").click()


def words(count: int) -> str:
    return " ".join(f"word{index}" for index in range(count))


def test_the_answer_streams_in_steps(driver: Any, server: str) -> None:
    open_page(driver, server + "/playground")
    message = words(40)  # two seconds at a word every 50 ms
    say(driver, "slow", message)
    lengths = []
    while not (answer := answers(driver)) or answer[-1]["state"] == "streaming":
        if answer:
            lengths.append(len(answer[-1]["text"]))
        time.sleep(0.1)
    assert answers(driver) == [{"text": message, "state": "done", "run": answer[-1]["run"]}]
    growing = sorted({length for length in lengths if 0 < length < len(message)})
    assert len(growing) >= 5, lengths  # seen part-way, several times, each time longer


def test_stop_cancels_the_run(driver: Any, server: str) -> None:
    open_page(driver, server + "/")  # `/` serves the playground too
    say(driver, "slow", words(200))
    wait_for(lambda: answers(driver) and len(answers(driver)[-1]["text"]) > 20)
    driver.find_element("id", "stop").click()
    answer = wait_for(lambda: (a := answers(driver)[-1])["state"] != "streaming" and a)
    assert answer["state"] == "stopped"
    assert 0 < len(answer["text"]) < len(words(200))
    assert httpx.get(f"{server}/runs/{answer['run']}").json()["status"] == "cancelled"
    assert driver.find_element("id", "stop").is_displayed() is False


def test_sessions_show_in_the_sidebar_and_reopen_after_a_reload(driver: Any, server: str) -> None:
    open_page(driver, server + "/playground")
    say(driver, "assistant", "hello from the sidebar test")
    wait_for(lambda: answers(driver) and answers(driver)[-1]["state"] == "done")
    script = "return [...document.querySelectorAll('#sessions .open')].map((b) => b.textContent)"
    titles = lambda: js(driver, script)  # noqa: E731
    wait_for(lambda: "hello from the sidebar test" in titles())
    say(driver, "assistant", "a second turn")
    wait_for(lambda: len(answers(driver)) == 2 and answers(driver)[-1]["state"] == "done")
    if path := os.environ.get("ORBITER_PLAYGROUND_SCREENSHOT"):
        driver.save_screenshot(path)

    driver.refresh()
    wait_for(lambda: len(answers(driver)) == 2)
    assert [a["text"] for a in answers(driver)] == ["hello from the sidebar test", "a second turn"]
    users = js(driver, "return [...document.querySelectorAll('.msg.user')].map((m) => m.textContent)")
    assert users == ["hello from the sidebar test", "a second turn"]
    assert "hello from the sidebar test" in titles()

    # a new chat, then back to the first through the sidebar; a title; a delete
    driver.find_element("id", "new").click()
    assert answers(driver) == []
    js(driver, "document.querySelector('#sessions li .open').click()")
    wait_for(lambda: len(answers(driver)) == 2)
    title = driver.find_element("id", "title")
    title.clear()
    title.send_keys("Renamed\n")
    js(driver, "document.getElementById('title').dispatchEvent(new Event('change'))")
    wait_for(lambda: "Renamed" in titles())
    js(driver, "document.querySelector('#sessions li.current .delete').click()")
    wait_for(lambda: "Renamed" not in titles())
    assert answers(driver) == []


def test_a_reload_mid_answer_resumes_it(driver: Any, server: str) -> None:
    open_page(driver, server + "/playground")
    message = words(60)  # three seconds
    say(driver, "slow", message)
    wait_for(lambda: answers(driver) and len(answers(driver)[-1]["text"]) > 10)
    run = answers(driver)[-1]["run"]
    driver.refresh()
    wait_for(lambda: answers(driver) and answers(driver)[-1]["state"] == "done", timeout=15)
    # drawn again by following the run (an answer read from the history has no run id), once
    assert answers(driver) == [{"text": message, "state": "done", "run": run}]
    assert httpx.get(f"{server}/runs/{run}").json()["status"] == "completed"


def test_a_phone_sized_screen_folds_the_sidebar(driver: Any, server: str) -> None:
    driver.set_window_size(390, 844)
    open_page(driver, server + "/playground")
    sidebar = driver.find_element("id", "sidebar")
    menu = driver.find_element("id", "menu")
    assert menu.is_displayed()
    wait_for(lambda: sidebar.rect["x"] + sidebar.rect["width"] <= 0)  # off screen
    menu.click()
    wait_for(lambda: sidebar.rect["x"] == 0)
    assert menu.get_attribute("aria-expanded") == "true"
    driver.find_element("id", "new").click()  # picking something folds it again
    wait_for(lambda: sidebar.rect["x"] + sidebar.rect["width"] <= 0)
    say(driver, "assistant", "small screens work too")
    wait_for(lambda: answers(driver) and answers(driver)[-1]["state"] == "done")
    width = js(driver, "return document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways


def test_tool_calls_and_results_show_as_cards(driver: Any, server: str) -> None:
    # the echo model calls no tools: a session's stored history brings them in
    session = httpx.post(f"{server}/sessions", json={"agent_name": "assistant", "title": "weather"}).json()
    call = {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    assert httpx.post(f"{server}/sessions/{session['id']}/messages", json=history).status_code == 201
    open_page(driver, server + "/playground")
    item = f"#sessions li[data-id='{session['id']}']"
    wait_for(lambda: js(driver, f'return !!document.querySelector("{item}")'))
    js(driver, f'document.querySelector("{item} .open").click()')
    card = wait_for(lambda: driver.find_elements("css selector", "details.tool"))[0]
    assert card.get_attribute("open") is None  # folded
    assert "get_weather" in card.text
    card.find_element("tag name", "summary").click()
    assert '"city": "Paris"' in card.find_element("css selector", "pre.args").text
    assert card.find_element("css selector", "pre.result").text == "sunny"
    assert answers(driver)[-1]["text"] == "It is sunny."


def test_a_tool_using_agent_shows_its_cards_as_it_runs(driver: Any, server: str) -> None:
    open_page(driver, server + "/playground")
    say(driver, "weather", "weather in Paris?")
    card = wait_for(lambda: driver.find_elements("css selector", "details.tool"))[0]
    assert answers(driver)[-1]["state"] == "streaming"  # the card came while the run went on
    assert card.get_attribute("open") is None and "get_weather" in card.text
    wait_for(lambda: answers(driver)[-1]["state"] == "done")
    card.find_element("tag name", "summary").click()
    assert '"city": "Paris"' in card.find_element("css selector", "pre.args").text
    assert card.find_element("css selector", "pre.result").text == "sunny"
    assert answers(driver)[-1]["text"] == "It is sunny."
