"""Two scripted raters and the organiser on a study served by `moslora study serve`, in real
headless Chromium (selenium + chromedriver).

Rater one types a name full of HTML, answers every trial by keyboard, reloads half-way (the page
must resume from the server where it was), goes back once to change an answer, and leaves a
comment full of HTML. Rater two answers half the trials in one browser, then carries on in a
second browser with a fresh profile (another device): the page must resume from the server.
The organiser's page must then show both raters' progress, their names and comments as text,
and the tally. Writes what it gave and what it saw to --answers for the Rust test.

usage: tests/browser/study_serve.py --base http://127.0.0.1:PORT --rater NAME=TOKEN --rater NAME=TOKEN
                      --organiser TOKEN --answers OUT.json [--seed N] [--screenshot PNG]
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_rater import KEYS, browser  # noqa: E402

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HTML_NAME = '<b>Ann</b> & <img src=x onerror="document.title=\'pwned\'">'
HTML_COMMENT = "</pre><script>document.title='pwned'</script> looked <i>fine</i>"


class Rater:
    """One browser (one device) on one rater's link."""

    def __init__(self, url, log):
        self.profile = tempfile.mkdtemp(prefix="study-serve-profile-")
        self.downloads = tempfile.mkdtemp(prefix="study-serve-dl-")
        self.driver = browser(self.downloads, self.profile)
        self.wait = WebDriverWait(self.driver, 60)  # generous: a loaded CI machine is slow
        self.url, self.log = url, log

    def close(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
        shutil.rmtree(self.downloads, ignore_errors=True)

    def el(self, i):
        return self.driver.find_element(By.ID, i)

    def visible(self, i):
        return "hidden" not in (self.el(i).get_attribute("class") or "").split()

    def keys(self, k):
        ActionChains(self.driver).send_keys(k).perform()

    def settled(self):
        """Every answer acknowledged by the server."""
        self.wait.until(lambda d: d.execute_script("return document.body.dataset.pending") == "0")

    def open(self):
        self.driver.get(self.url)
        self.wait.until(lambda d: self.visible("start") or self.visible("trial") or self.visible("done"))
        self.settled()

    def position(self):
        return int(self.el("trial").get_attribute("data-position"))

    def answer(self, rng, answers, stop_after=None, reload_at=None, back_at=None, screenshot=None):
        """Answer trials until done (or after `stop_after` answers on this device)."""
        given = 0
        while not self.visible("done"):
            tid, pos = self.el("trial").get_attribute("data-trial"), self.position()
            ks, kp = rng.choice("asd"), rng.choice("jkl")
            self.keys(ks)
            self.keys(kp)
            answers[tid] = {"similarity": KEYS["similarity"][ks], "prompt": KEYS["prompt"][kp]}
            if screenshot and pos == 2:
                self.driver.save_screenshot(screenshot)
            self.keys(Keys.ENTER)
            self.wait.until(lambda d: self.visible("done") or self.position() == pos + 1)
            given += 1
            if pos == back_at:
                self.keys(Keys.BACKSPACE)
                self.wait.until(lambda d: self.el("trial").get_attribute("data-trial") == tid)
                chosen = {b.get_attribute("data-question"): b.get_attribute("data-choice")
                          for b in self.driver.find_elements(By.CSS_SELECTOR, ".choices button.chosen")}
                assert chosen == answers[tid], f"back at {tid}: page shows {chosen}, gave {answers[tid]}"
                other = rng.choice([k for k in "asd" if k != ks])
                self.keys(other)
                answers[tid]["similarity"] = KEYS["similarity"][other]
                self.keys(Keys.ENTER)
                self.wait.until(lambda d: self.position() == pos + 1)
                self.log.append(f"went back to {tid} and changed similarity to {answers[tid]['similarity']}")
            if pos == reload_at:
                self.settled()
                self.driver.refresh()
                self.wait.until(lambda d: self.visible("trial"))
                self.settled()
                shown = self.el("progress-text").text
                assert self.position() == pos + 1, f"after reload at {self.position()}, expected {pos + 1}"
                assert shown.startswith(f"{len(answers)} of "), f"after reload: {shown!r}"
                self.log.append(f"reloaded after {pos} answers: resumed at {pos + 1}, progress {shown!r}")
            if stop_after is not None and given >= stop_after:
                break
        self.settled()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--rater", action="append", required=True)
    ap.add_argument("--organiser", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshot")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    (one, t1), (two, t2) = [r.split("=", 1) for r in args.rater]
    log = []
    result = {"raters": {}, "log": log, "html_name": HTML_NAME, "html_comment": HTML_COMMENT}

    # Rater one: a name and a comment full of HTML, a reload, a changed answer.
    r = Rater(f"{args.base}/#{t1}", log)
    try:
        r.open()
        assert r.visible("start"), "a new rater starts at the start page"
        assert r.el("name").get_attribute("value") == "", "the name box holds text"
        assert r.el("name").get_attribute("placeholder") == one, "the name box offers the rater's name"
        assert r.el("served-as").text.startswith(f"You are rating as {one}"), r.el("served-as").text
        assert "hidden" in r.el("switch").get_attribute("class"), "one link, one rater: no switching"
        r.el("name").clear()
        r.el("name").send_keys(HTML_NAME)
        r.el("name").send_keys(Keys.ENTER)
        r.wait.until(lambda d: r.visible("trial"))
        n = int(r.el("progress-text").text.split(" of ")[1].split()[0])
        answers = {}
        r.answer(rng, answers, reload_at=n // 2, back_at=max(2, n // 3), screenshot=args.screenshot)
        assert r.el("progress-text").text.startswith(f"{n} of {n}")
        assert r.el("rater-name").text == HTML_NAME, "the rater's name is shown as text"
        r.el("comment").send_keys(HTML_COMMENT)
        r.el("send-comment").click()
        r.wait.until(lambda d: r.el("comment-sent").text == "comment saved")
        assert r.driver.title != "pwned"
        result["raters"][one] = {"name": HTML_NAME, "answers": answers}
    finally:
        r.close()

    # Rater two: half on one device, the rest on another.
    answers = {}
    first = Rater(f"{args.base}/#{t2}", log)
    try:
        first.open()
        first.el("name").send_keys(Keys.ENTER)
        first.wait.until(lambda d: first.visible("trial"))
        first.answer(rng, answers, stop_after=n // 2)
        at = first.position()
    finally:
        first.close()
    second = Rater(f"{args.base}/#{t2}", log)
    try:
        second.open()
        assert second.visible("trial"), "the second device resumes at the trials"
        shown = second.el("progress-text").text
        assert second.position() == at, f"the second device is at {second.position()}, expected {at}"
        assert shown.startswith(f"{len(answers)} of {n}"), f"second device: {shown!r}"
        log.append(f"{two} changed device after {len(answers)} answers: resumed at {at}, progress {shown!r}")
        second.answer(rng, answers)
        assert second.el("progress-text").text.startswith(f"{n} of {n}")
        result["raters"][two] = {"name": two, "answers": answers}
    finally:
        second.close()

    # The organiser's page.
    o = Rater(f"{args.base}/organiser#{args.organiser}", log)
    try:
        o.driver.get(o.url)
        o.wait.until(lambda d: d.execute_script("return document.body.dataset.loaded"))
        rows = []
        for tr in o.driver.find_elements(By.CSS_SELECTOR, "#raters tr"):
            cells = tr.find_elements(By.TAG_NAME, "td")
            rows.append({"rater": tr.get_attribute("data-rater"),
                         "answered": int(tr.get_attribute("data-answered")),
                         "name": cells[1].text, "comment": cells[5].text,
                         "name_html": cells[1].get_attribute("innerHTML")})
        injected = o.driver.find_elements(By.CSS_SELECTOR, "#raters b, #raters img, #raters script, #raters i")
        result["organiser"] = {"rows": rows, "tally_text": o.el("tally").text,
                               "summary": o.el("summary").text, "injected_elements": len(injected),
                               "title": o.driver.title}
        log.append(f"organiser page: {o.el('summary').text}")
    finally:
        o.close()

    with open(args.answers, "w") as f:
        json.dump(result, f, indent=1)
    for line in log:
        print(line)


if __name__ == "__main__":
    main()
