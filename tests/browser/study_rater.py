"""A scripted rater for the study page, in a real headless Chromium (selenium + chromedriver).

It enters a name, answers every trial by keyboard with seeded random choices, reloads the page
half-way (the answers must survive in localStorage and the page must resume where it was),
goes back once to change an answer, and downloads the votes. It writes the answers it gave
(the final ones) to --answers, for the Rust test to compare with the tally.

usage: tests/browser/study_rater.py --page STUDY/index.html --downloads DIR --answers OUT.json
                      [--rater NAME] [--seed N] [--screenshot PNG]
"""

import argparse
import glob
import json
import os
import random
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from file_storage import reload_restoring

KEYS = {"similarity": {"a": "left", "s": "tie", "d": "right"},
        "prompt": {"j": "left", "k": "tie", "l": "right"}}


def find(name, candidates):
    for c in candidates:
        if c and os.path.exists(c):
            return c
    sys.exit(f"{name} not found (tried {', '.join(c for c in candidates if c)}): run `make browser`")


def browser(downloads, profile):
    opts = Options()
    opts.binary_location = find("chromium", [os.environ.get("CHROMIUM"), "/usr/bin/chromium",
                                             "/usr/bin/chromium-browser"])
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"]:
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
    })
    service = Service(executable_path=find("chromedriver", [os.environ.get("CHROMEDRIVER"),
                                                            "/usr/bin/chromedriver"]))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": downloads})
    return driver


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--downloads", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--rater", default="Robin Scripted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshot")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.downloads, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="study-rater-profile-")
    driver = browser(os.path.abspath(args.downloads), profile)
    wait = WebDriverWait(driver, 60)  # generous: a loaded CI machine is slow
    keys = lambda k: ActionChains(driver).send_keys(k).perform()
    el = lambda i: driver.find_element(By.ID, i)
    visible = lambda i: "hidden" not in (el(i).get_attribute("class") or "").split()
    try:
        driver.get("file://" + os.path.abspath(args.page))
        wait.until(lambda d: visible("start"))
        n = len(json.loads(el("study-data").get_attribute("textContent"))["trials"])
        el("name").send_keys(args.rater)
        el("name").send_keys(Keys.ENTER)
        wait.until(lambda d: visible("trial"))

        answers, log = {}, []
        reload_at, back_at = n // 2, max(1, n // 3)
        reloaded = went_back = False
        while not visible("done"):
            trial = el("trial")
            tid, pos = trial.get_attribute("data-trial"), int(trial.get_attribute("data-position"))
            ks, kp = rng.choice("asd"), rng.choice("jkl")
            keys(ks)
            if args.screenshot and pos == 2:
                # The page as a 1280 x 900 browser window shows it.
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
                time.sleep(0.3)
                driver.save_screenshot(args.screenshot)
                driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            keys(kp)
            answers[tid] = {"similarity": KEYS["similarity"][ks], "prompt": KEYS["prompt"][kp]}
            keys(Keys.ENTER)
            wait.until(lambda d: visible("done") or el("trial").get_attribute("data-position") == str(pos + 1))
            if pos == back_at and not went_back:
                # Back once, check the page shows the answers given, change the first one.
                keys(Keys.BACKSPACE)
                wait.until(lambda d: el("trial").get_attribute("data-trial") == tid)
                chosen = {b.get_attribute("data-question"): b.get_attribute("data-choice")
                          for b in driver.find_elements(By.CSS_SELECTOR, ".choices button.chosen")}
                assert chosen == answers[tid], f"back at {tid}: page shows {chosen}, gave {answers[tid]}"
                other = rng.choice([k for k in "asd" if k != ks])
                keys(other)
                answers[tid]["similarity"] = KEYS["similarity"][other]
                keys(Keys.ENTER)
                wait.until(lambda d: el("trial").get_attribute("data-position") == str(pos + 1))
                log.append(f"went back to {tid} and changed similarity to {answers[tid]['similarity']}")
                went_back = True
            if pos == reload_at and not reloaded:
                reload_restoring(driver, wait, visible)
                now = int(el("trial").get_attribute("data-position"))
                shown = el("progress-text").text
                assert now == pos + 1, f"after reload the page is at {now}, expected {pos + 1}"
                assert shown.startswith(f"{len(answers)} of {n}"), f"after reload: {shown!r}"
                log.append(f"reloaded after {pos} answers: resumed at {now}, progress {shown!r}")
                reloaded = True
        assert reloaded and went_back, "the script did not exercise reload and back"
        assert el("progress-text").text.startswith(f"{n} of {n}")

        el("download-done").click()
        deadline = time.time() + 15
        files = []
        while time.time() < deadline:
            files = [f for f in glob.glob(os.path.join(args.downloads, "votes-*.json"))]
            if files and not glob.glob(os.path.join(args.downloads, "*.crdownload")):
                break
            time.sleep(0.1)
        assert len(files) == 1, f"expected one downloaded votes file, found {files}"
        with open(args.answers, "w") as f:
            json.dump({"rater": args.rater, "trials": n, "answers": answers, "log": log,
                       "votes_file": files[0]}, f, indent=1)
        for line in log:
            print(line)
        print(f"answered {len(answers)} trials; votes downloaded to {files[0]}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
