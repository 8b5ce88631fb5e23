"""Open pages built from hostile prompts, file names and rater names in headless Chromium and
check that nothing they hold runs and that their text shows as written.

Before each page loads, window.alert, confirm and prompt are replaced (CDP
Page.addScriptToEvaluateOnNewDocument) by functions that record their calls; a prompt such as
`<img src=x onerror=alert(1)>` that reached the DOM as markup would call one. After load the
script checks: no call was recorded, no element the hostile text would create is in the DOM
(an `img[src=x]`, an extra `<script>`), and every expected text is in the page's visible text.
On the rater page it also types a hostile rater name and starts the study.

usage: tests/browser/hostile_pages.py --gallery INDEX.html --rater-page STUDY/index.html
           --expect-gallery TEXT... --expect-rater TEXT... --rater-name NAME --out REPORT.json
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from file_storage import reload_restoring

TRAP = """
window.__calls = [];
for (const name of ['alert', 'confirm', 'prompt']) {
  window[name] = (...args) => { window.__calls.push(name + '(' + args.join(',') + ')'); };
}
"""


def find(name, candidates):
    for c in candidates:
        if c and os.path.exists(c):
            return c
    sys.exit(f"{name} not found (tried {', '.join(c for c in candidates if c)}): run `make browser`")


def browser(profile):
    opts = Options()
    opts.binary_location = find("chromium", [os.environ.get("CHROMIUM"), "/usr/bin/chromium",
                                             "/usr/bin/chromium-browser"])
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"]:
        opts.add_argument(flag)
    service = Service(executable_path=find("chromedriver", [os.environ.get("CHROMEDRIVER"),
                                                            "/usr/bin/chromedriver"]))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
    return driver


def inspect(driver, expect, scripts):
    """What the page did and shows: calls of the trapped functions, injected elements, and the
    expected texts missing from the visible text."""
    text = driver.execute_script("return document.body.innerText")
    return {
        "calls": driver.execute_script("return window.__calls"),
        "img_src_x": driver.execute_script(
            "return document.querySelectorAll('img[src=\"x\"], img[src$=\"/x\"]').length"),
        "scripts": driver.execute_script("return document.scripts.length"),
        "expected_scripts": scripts,
        "missing": [t for t in expect if t not in text],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--rater-page", required=True)
    ap.add_argument("--expect-gallery", nargs="+", required=True)
    ap.add_argument("--expect-rater", nargs="+", required=True)
    ap.add_argument("--rater-name", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="hostile-pages-profile-")
    driver = browser(profile)
    # Generous: on a loaded CI machine a headless Chromium reload can take many seconds.
    wait = WebDriverWait(driver, 60)
    report = {}
    try:
        # The gallery: one inline script of its own.
        driver.get("file://" + os.path.abspath(args.gallery))
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        # Typing into the prompt filter runs the page's own code on the hostile text.
        driver.find_element(By.ID, "filter").send_keys("sks")
        report["gallery"] = inspect(driver, args.expect_gallery, 1)

        # The rater page: the study's JSON and the page's script; a hostile rater name.
        driver.get("file://" + os.path.abspath(args.rater_page))
        visible = lambda i: "hidden" not in (driver.find_element(By.ID, i).get_attribute("class") or "").split()
        wait.until(lambda d: visible("start"))
        name = driver.find_element(By.ID, "name")
        name.send_keys(args.rater_name)
        name.send_keys(Keys.ENTER)
        wait.until(lambda d: visible("trial"))
        report["rater"] = inspect(driver, args.expect_rater + [args.rater_name], 2)
        report["rater"]["shown_prompt"] = driver.find_element(By.ID, "prompt-text").text
        # Reload: the name and answers come back from localStorage, through the same code.
        try:
            reload_restoring(driver, wait, visible)
        except Exception:
            # What the reloaded page holds, to tell a lost save from a slow page.
            print("after the reload:", driver.execute_script(
                "return {stored: Object.keys(localStorage), ready: document.readyState,"
                " sections: ['start', 'trial', 'done'].map(i => i + ': ' + document.getElementById(i).className)}"),
                file=sys.stderr)
            raise
        report["rater_reloaded"] = inspect(driver, [args.rater_name], 2)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
