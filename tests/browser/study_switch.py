"""Two raters' links in one tab of headless Chromium, as friends sharing one laptop use a served
study (`moslora study serve`).

Rater one opens their link, starts without typing a name, answers two pairs and half of a third;
then rater two's link is opened in the same tab. Only the `#` part of the address changes, which
browsers do without loading the page again. The page must follow the link: say it is rater two,
offer rater two's name as a placeholder only, and take rater two's answers as rater two's. Rater
two types a name and answers two pairs; then rater one's link comes back in the same tab, and the
page must resume rater one where they were. Nothing may be kept in the browser's storage.
Writes what it gave and what it saw to --answers, for the Rust test to compare with the server.

usage: tests/browser/study_switch.py --base http://127.0.0.1:PORT --rater NAME=TOKEN
                      --rater NAME=TOKEN --answers OUT.json [--seed N] [--screenshot PNG]
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_rater import KEYS  # noqa: E402
from study_serve import Rater  # noqa: E402

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

TYPED_NAME = "Ben"


def shown_rater(r):
    """The rater the page says it is (data-rater) once it has loaded, else None."""
    try:
        if r.driver.execute_script("return document.readyState") != "complete":
            return None
        return r.driver.execute_script("return document.body.dataset.rater || null")
    except Exception:  # the page is loading again
        return None


def open_in_same_tab(r, url, name, log):
    """Put `url` in this tab's address bar; wait until the page is `name`'s and settled."""
    r.driver.execute_script("window.sameDocument = true")
    t0 = time.monotonic()
    r.driver.get(url)
    r.wait.until(lambda d: shown_rater(r) == name
                 and (r.visible("start") or r.visible("trial") or r.visible("done")))
    r.settled()
    reloaded = not r.driver.execute_script("return window.sameDocument === true")
    log.append(f"opened {name}'s link in the same tab: the page shows {name} after "
               f"{time.monotonic() - t0:.2f} s (page loaded again: {reloaded})")


def banner(r):
    return r.el("served-as").find_element(By.TAG_NAME, "b").text


def chosen(r):
    return {b.get_attribute("data-question"): b.get_attribute("data-choice")
            for b in r.driver.find_elements(By.CSS_SELECTOR, ".choices button.chosen")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--rater", action="append", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshot")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    (one, t1), (two, t2) = [r.split("=", 1) for r in args.rater]
    log = []
    result = {"raters": {}, "log": log, "typed_name": TYPED_NAME}

    r = Rater(f"{args.base}/#{t1}", log)
    try:
        # Rater one: no name typed (the link's name is used), two pairs and half of a third.
        r.open()
        assert shown_rater(r) == one, f"first link: the page says {shown_rater(r)!r}"
        assert banner(r) == f"You are rating as {one}", banner(r)
        assert r.visible("start")
        assert r.el("name").get_attribute("value") == "", "the name box holds text"
        assert r.el("name").get_attribute("placeholder") == one, r.el("name").get_attribute("placeholder")
        r.el("name").send_keys(Keys.ENTER)
        r.wait.until(lambda d: r.visible("trial"))
        first = {}
        r.answer(rng, first, stop_after=2)
        half_trial = r.el("trial").get_attribute("data-trial")
        k = rng.choice("asd")
        r.keys(k)
        first[half_trial] = {"similarity": KEYS["similarity"][k], "prompt": None}
        log.append(f"{one} answered {len(first) - 1} pairs and half of {half_trial}")
        # No waiting for the server: the half answer may still be on its way.

        # Rater two's link in the same tab.
        open_in_same_tab(r, f"{args.base}/#{t2}", two, log)
        assert banner(r) == f"You are rating as {two}", banner(r)
        assert r.visible("start"), "a new rater starts at the start page"
        assert r.el("name").get_attribute("value") == "", "the name box holds the first rater's name"
        assert r.el("name").get_attribute("placeholder") == two, r.el("name").get_attribute("placeholder")
        assert r.el("progress-text").text.startswith("0 of "), r.el("progress-text").text
        r.el("name").send_keys(TYPED_NAME)
        r.el("name").send_keys(Keys.ENTER)
        r.wait.until(lambda d: r.visible("trial"))
        assert r.el("rater-name").text == TYPED_NAME, r.el("rater-name").text
        second = {}
        r.answer(rng, second, stop_after=2, screenshot=args.screenshot)
        assert r.el("progress-text").text.startswith("2 of "), r.el("progress-text").text
        result["raters"][two] = {"name": TYPED_NAME, "answers": second}

        # Rater one's link again: resumed where they were, their half answer shown.
        open_in_same_tab(r, f"{args.base}/#{t1}", one, log)
        assert banner(r) == f"You are rating as {one}", banner(r)
        assert r.visible("trial"), "rater one resumes at the trials"
        assert r.position() == 3, f"rater one resumes at {r.position()}, expected 3"
        assert r.el("trial").get_attribute("data-trial") == half_trial
        assert chosen(r) == {"similarity": first[half_trial]["similarity"]}, chosen(r)
        assert r.el("progress-text").text.startswith("2 of "), r.el("progress-text").text
        log.append(f"{one} resumed at pair 3 with {r.el('progress-text').text!r}")
        result["raters"][one] = {"name": one, "answers": first}

        stored = r.driver.execute_script("return [localStorage.length, sessionStorage.length]")
        result["browser_storage_items"] = stored
    finally:
        r.close()

    with open(args.answers, "w") as f:
        json.dump(result, f, indent=1)
    for line in log:
        print(line)


if __name__ == "__main__":
    main()
