"""Open pages in headless Chromium at a laptop's width, check that they read without
scrolling sideways and show the words they must, and save a screenshot of each.

The window is 1366 px wide (the commonest laptop screen). For each page the script waits
until its READY expression (JavaScript) is true, then records the document's scrollWidth
against its clientWidth (a page wider than the window scrolls sideways), which of the
EXPECT texts are missing from the page's visible text, and saves a screenshot of the top of
the page (at most 1100 px tall), reduced to a 256-colour PNG so that it stays small.

usage: tests/browser/screenshots.py --spec SPEC.json --out REPORT.json
  SPEC.json: [{"name": ..., "url": ..., "ready": JS, "expect": [TEXT...], "shot": PATH}]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

WIDTH = 1366


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
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={WIDTH},900", "--force-device-scale-factor=1"]:
        opts.add_argument(flag)
    service = Service(executable_path=find("chromedriver", [os.environ.get("CHROMEDRIVER"),
                                                            "/usr/bin/chromedriver"]))
    return webdriver.Chrome(options=opts, service=service)


def shoot(driver, path, height):
    """The top `height` px of the page at WIDTH, as a 256-colour PNG."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": height, "deviceScaleFactor": 1,
                            "mobile": False})
    time.sleep(0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    driver.save_screenshot(path)
    try:
        from PIL import Image
        img = Image.open(path).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    except ImportError:
        pass


def check(driver, page):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": 768, "deviceScaleFactor": 1, "mobile": False})
    driver.get(page["url"])
    deadline = time.time() + 30
    while not driver.execute_script(f"return !!({page['ready']});"):
        if time.time() > deadline:
            return {"error": f"not ready after 30 s: {page['ready']}"}
        time.sleep(0.2)
    time.sleep(0.3)
    widths = driver.execute_script(
        "const e = document.documentElement;"
        "return [e.scrollWidth, e.clientWidth, document.body.scrollWidth];")
    text = driver.execute_script("return document.body.innerText;")
    missing = [t for t in page["expect"] if t not in text]
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    shoot(driver, page["shot"], max(400, min(int(height), 1100)))
    return {"scroll_width": widths[0], "client_width": widths[1],
            "body_scroll_width": widths[2], "missing": missing, "text": text[:4000]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pages = json.load(open(a.spec))
    profile = tempfile.mkdtemp(prefix="moslora-chromium-")
    report = {}
    driver = browser(profile)
    try:
        for page in pages:
            report[page["name"]] = check(driver, page)
            print(page["name"], {k: v for k, v in report[page["name"]].items() if k != "text"})
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    json.dump(report, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
