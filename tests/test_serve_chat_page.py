"""Issue 8: the server's chat page in headless Chromium — an answer streamed in pieces, a second turn
with the history (Chinese drawn as glyphs), the stop button."""

import os
import shutil

import pytest
from serve_prompts import sentence_prompts

from conftest import ROOT, start_server

MAX_NEW = 48  # the tokens the page asks for (typed into its max_tokens box)


@pytest.fixture(scope="module")
def prompts():
    return sentence_prompts()


def _chromium():
    found = shutil.which("chromium") and os.path.exists("/usr/bin/chromedriver")
    if not found:
        if os.environ.get("CI") == "true":
            raise AssertionError("chromium / chromedriver missing on CI (make browser installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")


@pytest.fixture()
def plain_server(exported_tiny):
    """A server whose chat prompts are the raw text (--template plain): the tiny model, pre-trained on
    sentences but not instruction-tuned, continues those for many tokens; chunks of 2 make many pieces."""
    proc, base = start_server(exported_tiny, "--template", "plain", "--chunk_tokens", "2")
    yield base
    proc.terminate()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]


# In the page, with the element's own font: each Han character of the element drawn on a canvas.
# Without a CJK font every one comes out as the same empty box (the glyph of a private-use character).
GLYPHS_DRAWN = """
const el = arguments[0], font = getComputedStyle(el).font;
const draw = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 64;
  const g = c.getContext('2d'); g.font = font; g.fillText(ch, 8, 40); return c.toDataURL(); };
const han = [...el.textContent].filter((ch) => /\\p{Script=Han}/u.test(ch)), box = draw('\\uE000');
return {han: han.length, kinds: new Set(han).size, distinct: new Set(han.map(draw)).size,
        boxes: han.filter((ch) => draw(ch) === box).length};
"""


def test_chat_page_streams_an_answer_in_headless_chromium(plain_server, prompts):
    _chromium()
    server = plain_server
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,720",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(server + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text not in ("", "connecting…"))
        box = driver.find_element(By.ID, "max_tokens")
        box.clear()
        box.send_keys(str(MAX_NEW))
        driver.find_element(By.ID, "input").send_keys(prompts[3] + "\n")
        done = WebDriverWait(driver, 120).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")
        )
        answer = done[0]
        assert answer.text.strip() and int(answer.get_attribute("data-chunks")) >= 2, (
            answer.text,
            answer.get_attribute("data-chunks"),
        )
        # A second turn carries the history; the tiny model learned "The word for X in Chinese is Y.",
        # so this answer is in Chinese, which must be drawn as glyphs, not empty boxes.
        driver.find_element(By.ID, "input").send_keys("The word for dog in Chinese is\n")
        WebDriverWait(driver, 120).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")) == 2
        )
        chinese = driver.find_elements(By.CSS_SELECTOR, ".assistant")[1]
        drawn = driver.execute_script(GLYPHS_DRAWN, chinese)
        assert drawn["han"] >= 1 and drawn["boxes"] == 0 and drawn["distinct"] == drawn["kinds"], (chinese.text, drawn)
        # Stop: the page's button is clicked the moment the first piece shows (a person is slower than the tiny model).
        driver.execute_script("""new MutationObserver((changes, observer) => {
            const last = [...document.querySelectorAll('.assistant')].pop();
            if (last && last.dataset.chunks === '1') { observer.disconnect(); document.getElementById('stop').click(); }
        }).observe(document.getElementById('log'), {subtree: true, childList: true, attributes: true});""")
        # Sampling hot enough that EOS is unlikely: the answer runs for all MAX_NEW tokens unless stopped.
        driver.find_element(By.ID, "sample").click()
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("5")
        driver.find_element(By.ID, "input").send_keys(prompts[2] + "\n")
        WebDriverWait(driver, 120).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant:not([data-state=streaming])")) == 3
        )
        states = [a.get_attribute("data-state") for a in driver.find_elements(By.CSS_SELECTOR, ".assistant")]
        assert states == ["done", "done", "stopped"], states
        assert driver.find_element(By.ID, "send").is_enabled() and not driver.find_element(By.ID, "stop").is_enabled()
        shot = os.path.join(ROOT, "runs", "artefacts", "serve_chat.png")
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        assert driver.save_screenshot(shot) and os.path.getsize(shot) > 5000
        print(f"screenshot: {shot}")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
