"""Reloading a page opened from a file and checking that it restores itself from localStorage.

The rater page autosaves in localStorage and restores from it on load; that restore is what
the tests check. Chromium itself has, a few times in full test runs on a 2-core machine,
come back from the reload of a `file://` page with the origin's localStorage empty (no key at
all, the page back at its start), never when the same test ran alone or beside busy loops.
That is the browser's storage, not the page: the page's own save is checked before the
reload, and when the reloaded browser holds nothing, the copy taken before is put back and the
page reloaded once more, with a warning. A page that does not restore from what storage holds
still fails.
"""

import sys


def reload_restoring(driver, wait, visible, section="trial"):
    """Reload; wait until `section` shows again, restored from localStorage."""
    saved = driver.execute_script("return JSON.stringify(Object.assign({}, localStorage))")
    assert saved != "{}", "the page saved nothing in localStorage before the reload"
    driver.refresh()
    ready = lambda d: d.execute_script("return document.readyState") == "complete"
    wait.until(lambda d: visible(section) or (ready(d) and visible("start")))
    if visible(section):
        return
    held = driver.execute_script("return Object.keys(localStorage)")
    if held:
        raise AssertionError(f"after the reload the page is at its start, though storage holds {held}")
    print("warning: the browser came back from the reload with localStorage empty; the copy "
          "saved before is put back and the page reloaded once more", file=sys.stderr)
    driver.execute_script(
        "const s = JSON.parse(arguments[0]); for (const k in s) localStorage.setItem(k, s[k]);",
        saved)
    driver.refresh()
    wait.until(lambda d: visible(section))
