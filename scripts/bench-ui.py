#!/usr/bin/env python3
"""The web UI's first load, measured in headless Chromium against a running
cluster, beside a baseline run in the same script: curl fetching exactly the
files the page loaded, over one connection (what the network and the server
cost without a browser).

    scripts/bench-ui.py --url https://kvmesh-node:7100/ --ca CA --token TOKEN [--runs 5]

Each run starts a fresh browser profile (cold cache): the login form shown
(time and bytes), then the dashboard filled in after logging in; then a
reload with the cache warm. Prints one line per run and the medians.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import ui_browser  # noqa: E402  (the test's browser set-up: NSS db, flags)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TRANSFERRED = """
const e = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'));
return [e.reduce((s, x) => s + (x.transferSize || 0), 0), e.reduce((s, x) => s + (x.decodedBodySize || 0), 0),
        e.map(x => x.name)];
"""


def visible(d, sel, timeout=30):
    return WebDriverWait(d, timeout, poll_frequency=0.02).until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, sel) if e.is_displayed()])


def one_run(args):
    home = ui_browser.make_home(args.ca)
    ns = argparse.Namespace(chromium=args.chromium, chromedriver=args.chromedriver, resolve=args.resolve)
    d = ui_browser.start_browser(ns, home)
    try:
        d.get(args.url)
        visible(d, "#login-token")
        # From the navigation's start, as the page's own clock says (what
        # chromedriver adds before it is not the UI's).
        form_s = d.execute_script("return performance.now()") / 1000
        form_bytes, form_body, urls = d.execute_script(TRANSFERRED)
        nav = d.execute_script("const n = performance.getEntriesByType('navigation')[0]; return [n.connectStart, n.connectEnd, n.requestStart, n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd]")
        if args.verbose:
            print("  navigation (ms): connect %.0f-%.0f, request %.0f, response end %.0f, DOMContentLoaded %.0f, load %.0f" % tuple(nav))
        d.find_element(By.CSS_SELECTOR, "#login-token").send_keys(args.token)
        t1 = time.monotonic()
        d.find_element(By.CSS_SELECTOR, "#login-submit").click()
        visible(d, "#dash-hosts tr[data-node]")
        dash_s = time.monotonic() - t1
        all_bytes, _, urls = d.execute_script(TRANSFERRED)
        t2 = time.monotonic()
        d.refresh()
        visible(d, "#dash-hosts tr[data-node]")
        warm_s = time.monotonic() - t2
        warm_bytes, _, _ = d.execute_script(TRANSFERRED)
        return dict(form_s=form_s, form_bytes=form_bytes, form_body=form_body, dash_s=dash_s,
                    total_bytes=all_bytes, warm_s=warm_s, warm_bytes=warm_bytes, urls=urls)
    finally:
        d.quit()
        subprocess.run(["rm", "-rf", home])


def curl_baseline(args, urls):
    """The page's static files fetched by curl over one HTTP/2 connection."""
    files = sorted({u for u in urls if "/api/" not in u and "/ui/session" not in u and "/ui/login" not in u})
    port = args.url.split(":")[2].split("/")[0]
    cmd = ["curl", "-sS", "--http2", "--cacert", args.ca, "--resolve", f"kvmesh-node:{port}:{args.resolve}", "-o", "/dev/null"]
    for u in files[1:]:
        cmd += ["-o", "/dev/null"]
    t0 = time.monotonic()
    subprocess.run(cmd + files, check=True)
    return time.monotonic() - t0, len(files)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--verbose", action="store_true", help="print each load's navigation timing")
    p.add_argument("--resolve", default="127.0.0.1")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    runs = []
    for i in range(args.runs):
        r = one_run(args)
        base_s, files = curl_baseline(args, r["urls"])
        r["curl_s"] = base_s
        runs.append(r)
        print(f"run {i + 1}: login form {r['form_s'] * 1000:.0f} ms ({r['form_bytes'] / 1024:.0f} KiB over the wire, "
              f"{r['form_body'] / 1024:.0f} KiB decoded, {files} files); dashboard after login {r['dash_s'] * 1000:.0f} ms; "
              f"warm reload {r['warm_s'] * 1000:.0f} ms ({r['warm_bytes'] / 1024:.0f} KiB); curl of the same files "
              f"{base_s * 1000:.0f} ms", flush=True)
    med = lambda k: statistics.median(r[k] for r in runs)
    print(f"median: login form {med('form_s') * 1000:.0f} ms, {med('form_bytes') / 1024:.0f} KiB; dashboard after login "
          f"{med('dash_s') * 1000:.0f} ms; warm reload {med('warm_s') * 1000:.0f} ms, {med('warm_bytes') / 1024:.0f} KiB; "
          f"curl baseline {med('curl_s') * 1000:.0f} ms; first load / curl = {med('form_s') / med('curl_s'):.1f}x")


if __name__ == "__main__":
    main()
