"""`moslora app` in real headless Chromium (selenium + chromedriver), as a person uses it.

Creates a subject whose name is markup, drops 5 photos on it (the file input), lists a model,
starts a short comparison from the Toy world preset (the advanced panel's RUN.yaml cut to a few
steps), watches the job page reach "done" with both loss curves and a sample drawn, opens the
results and flips LoRA/MoSLoRA, downloads the kohya export, makes a study (its rater links),
and screenshots every page. No
alert may ever open and the title must never change to "pwned". Writes what it saw to --out.

usage: tests/browser/app.py --base http://127.0.0.1:PORT --photos DIR --model DIR --steps N
                            --screenshots DIR --downloads DIR --out OUT.json

The test run (the defaults) names the subject with markup and cuts everything short on a tiny
model. The README's screenshots come from a realistic run instead (--realistic: the subject
"robot", the toy model, a few hundred steps at batch 4, the toy prompt set on one seed).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_rater import browser  # noqa: E402

from selenium.common.exceptions import (NoAlertPresentException, NoSuchElementException,  # noqa: E402
                                        StaleElementReferenceException, WebDriverException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

MARKUP = "<img src=x onerror=\"document.title='pwned'\">Rex"


def main():
    ap = argparse.ArgumentParser()
    for a in ["--base", "--photos", "--model", "--screenshots", "--downloads", "--out"]:
        ap.add_argument(a, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model-name", default="tiny")
    ap.add_argument("--realistic", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="app-profile-")
    d = browser(args.downloads, profile)
    wait = WebDriverWait(d, 900 if args.realistic else 240, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    seen = {"pages": {}}
    alerts = 0

    def check_no_alert():
        nonlocal alerts
        try:
            d.switch_to.alert.dismiss()
            alerts += 1
        except NoAlertPresentException:
            pass
        assert d.title != "pwned", "markup ran"

    def shot(name):
        check_no_alert()
        t = time.time()
        d.save_screenshot(os.path.join(args.screenshots, f"app-{name}.png"))
        seen["pages"][name] = d.current_url
        return t

    def css(sel):
        return d.find_element(By.CSS_SELECTOR, sel)

    try:
        # Subjects: create one named with markup.
        d.get(args.base + "/subjects")
        css('input[name="name"]').send_keys("robot" if args.realistic else MARKUP)
        css('input[name="class"]').send_keys("robot")
        css("form.api button").click()
        wait.until(lambda _: "/subjects/" in d.current_url)
        # Drop 5 photos through the file input.
        photos = sorted(os.path.join(args.photos, f) for f in os.listdir(args.photos)
                        if f.endswith((".png", ".jpg", ".webp")))
        css('input[type="file"]').send_keys("\n".join(photos))
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "li.photo")) == len(photos))
        seen["photos"] = len(d.find_elements(By.CSS_SELECTOR, "li.photo"))
        seen["subject_title"] = css("h1").text
        shot("subject")

        # Models: list the test's model by path.
        d.get(args.base + "/models")
        # (the shipped toy model is listed from the start)
        if args.model_name not in css("ul.cards").text:
            css('input[name="path"]').send_keys(args.model)
            css('input[name="name"]').send_keys(args.model_name)
            css("form.api button").click()
            wait.until(lambda _: args.model_name in css("ul.cards").text)
        shot("models")

        # New comparison: Toy world preset, own prompts, the RUN.yaml cut short.
        d.get(args.base + "/new")
        Select(css('select[name="model"]')).select_by_visible_text(args.model_name)
        Select(css('select[name="preset"]')).select_by_value("toy")
        if not args.realistic:
            css('textarea[name="lines"]').send_keys("a [V] {class} in the snow\na [V] {class} on a beach")
        css("details summary").click()
        # The adapters: LoRA and MoSLoRA ticked; one alone is refused, with the reason.
        moslora = css('input[name="adapters"][value="moslora"]')
        seen["adapters_ticked"] = [e.get_attribute("value") for e in
                                   d.find_elements(By.CSS_SELECTOR, 'input[name="adapters"]:checked')]
        moslora.click()
        css("button.preview").click()
        wait.until(lambda _: "at least two" in css("#error").text)
        seen["adapters_refused"] = css("#error").text
        moslora.click()
        css("button.preview").click()
        yaml = css('textarea[name="yaml"]')
        wait.until(lambda _: "steps: 500" in yaml.get_attribute("value"))
        seen["adapters_yaml"] = "adapters: [lora, moslora]" in yaml.get_attribute("value")
        text = (yaml.get_attribute("value")
                .replace("steps: 500", f"steps: {args.steps}")
                .replace("seeds: [0, 1, 2, 3]", "seeds: [0]"))
        if args.realistic:
            every = max(args.steps // 4, 1)
            text = (text.replace("sample_every: 25", f"sample_every: {every}")
                    .replace("checkpoint_every: 25", f"checkpoint_every: {every}"))
        else:
            text = (text.replace("batch_size: 4", "batch_size: 1")
                    .replace("sample_every: 25", "sample_every: 2\n  validate_every: 3")
                    .replace("checkpoint_every: 25", "checkpoint_every: 2")
                    .replace("  steps: 30\n", "  steps: 2\n"))
        # Checked as it is typed: a misspelt field gets the command line's "did you mean".
        check = css("[data-yaml-check]")
        yaml.clear()
        yaml.send_keys("train:\n  stpes: 3\n")
        wait.until(lambda _: "did you mean" in check.text)
        seen["yaml_typo"] = check.text
        yaml.clear()
        yaml.send_keys(text)
        wait.until(lambda _: check.text.startswith("RUN.yaml reads"))
        seen["yaml_ok"] = check.text
        d.execute_script("window.scrollTo(0, 0)")  # the choices first, then the YAML
        shot("new")
        css("form.api > button:last-of-type").click()
        wait.until(lambda _: "/jobs/" in d.current_url)

        # The job, live, to "done" with the loss chart and a sample.
        # Meanwhile, the status lines it shows (and one picture of each phase, beside --out).
        seen["status"] = []
        phases = set()

        def watch(_):
            try:
                return look()
            except WebDriverException:  # the page reloads itself when the state changes
                return False

        def look():
            line = css("p.status").text
            if line and line not in seen["status"]:
                seen["status"].append(line)
                phase = line.split()[0]
                if phase not in phases and "/s" in line:
                    phases.add(phase)
                    d.save_screenshot(os.path.join(os.path.dirname(args.out), f"live-{phase}.png"))
            return css("[data-state]").text == "done"
        wait.until(watch)
        # The page reloads itself once on "done"; then it replays the job's events.
        time.sleep(1)
        d.refresh()
        wait.until(lambda _: css('polyline[data-series="moslora"]').get_attribute("points").count(",") >= args.steps)
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "[data-samples] img")) >= 2)
        seen["lora_points"] = css('polyline[data-series="lora"]').get_attribute("points").count(",")
        seen["validation_points"] = {
            k: css(f'polyline[data-series="{k}-validation"]').get_attribute("points").count(",")
            for k in ("lora", "moslora")
        }
        seen["validation_text"] = css("[data-validation]").text
        seen["samples"] = len(d.find_elements(By.CSS_SELECTOR, "[data-samples] img"))
        seen["command"] = d.find_elements(By.CSS_SELECTOR, "section.live pre")[1].text
        d.set_window_size(1280, 1050)  # the title, the loss curves and the samples in one picture
        shot("job")
        d.set_window_size(1280, 900)

        # Results: flip, then download the kohya export.
        css("a[data-results]").click()
        flip = css("img[data-flip]")
        before = flip.get_attribute("src")
        css("button.flipper").click()
        after = flip.get_attribute("src")
        seen["flipped"] = before != after and after.endswith(flip.get_attribute("data-b"))
        seen["flip_label"] = css("button.flipper span").text
        for h in d.find_elements(By.XPATH, "//h2[contains(., 'same noise')]"):
            d.execute_script("arguments[0].scrollIntoView()", h)  # the pictures, under the scores
        shot("results")
        seen["labels"] = [e.text for e in d.find_elements(By.CSS_SELECTOR, "figcaption[data-label]")][:2]
        css('a[data-download="kohya-lora"]').click()
        deadline = time.time() + 60
        got = []
        while time.time() < deadline:
            got = [f for f in os.listdir(args.downloads) if f.endswith(".safetensors")]
            if got:
                break
            time.sleep(0.2)
        seen["download"] = os.path.join(args.downloads, got[0]) if got else None

        # Make a study: the rater links and the organiser's page.
        d.get(seen["pages"]["results"])
        d.find_element(By.XPATH, "//button[contains(., 'Make a study')]").click()
        wait.until(lambda _: d.current_url.endswith("/study"))
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "input[data-link]")) == 3)
        seen["rater_links"] = [e.get_attribute("value") for e in d.find_elements(By.CSS_SELECTOR, "input[data-link]")]
        shot("study")

        # The queue, and load times of the pages.
        t = time.time()
        d.get(args.base + "/queue")
        seen["queue_load_s"] = time.time() - t
        shot("queue")
        check_no_alert()
    finally:
        seen["alerts"] = alerts
        with open(args.out, "w") as f:
            json.dump(seen, f, indent=1)
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
