#!/usr/bin/env python3
"""Browser smoke test of kvmesh's web UI: headless Chromium driven by Selenium 4.

    python3 tests/ui_browser.py --url https://kvmesh-node:PORT/ --ca CA_PEM \\
        --token NAME.SECRET --shots DIR --vm NAME --drain NODE_NAME \\
        [--expect-echo TEXT] [--console-line LINE] [--allow-console-error] \\
        [--skip-vnc] [--timeout SECONDS] [--chromium PATH] [--chromedriver PATH]

Flags:
  --url                 the node's UI (its host name must be kvmesh-node: the
                        certificate's name; the browser maps it to 127.0.0.1)
  --ca                  the cluster CA (PEM), trusted through a throwaway NSS db
  --token               an API token with the operator or admin role
  --shots               directory for the screenshots (NN-name.png), made if missing
  --vm                  name of the VM the test creates (1 vCPU, 64 MiB, no disk)
  --drain               the host to drain and activate again (auto: one that
                        does not run the new VM)
  --expect-echo TEXT    the serial console must show TEXT after the line is typed
                        (without it, what the console shows is only printed)
  --console-line LINE   what to type on the console (default: echo hello-from-browser)
  --console-ready TEXT  type only once the console shows TEXT (a booting guest
                        reads nothing)
  --allow-console-error a console the node closes with a reason (4000-range code,
                        e.g. a driver without a serial console) passes, printing it
  --skip-vnc            do not open the graphical console (by default it is opened
                        and whatever it shows, picture or close reason, is printed)
  --timeout SECONDS     the longest wait for a VM or host state (default 90)

Steps (each prints one line when it passes, and saves a screenshot):
  (a) open the URL, see the login form, sign in with the token
  (b) the dashboard shows the leader, the answering node and the hosts
  (c) VMs: create --vm from the form (the scheduler preview is shown before
      submitting), wait until the list shows it running
  (d) its serial console: type a line, read back the terminal's text
  (e) Hosts: drain --drain, see it draining or drained, activate it, see it up
  (f) Events: the drain's event is there, brought by the live stream (SSE;
      the page is never reloaded after signing in)
  (g) the graphical console view opens and shows a picture or a close reason
  (i) the storage, networks and images pages; with --upload FILE, FILE
      uploaded as an image (--upload-name, --upload-storage, --upload-kind)
      through the form, and listed
  (h) the browser's log has no SEVERE entry beyond the expected ones listed
      per step in EXPECTED_SEVERE

DOM hooks used: #login, #login-token, #login-submit, #login-error, #app,
#hdr-status, #hdr-live.on, #nav-*, #dash-leader, #dash-answered,
#dash-hosts tr[data-node], #vm-new, #vm-name, #vm-vcpus, #vm-memory,
#vm-preview[data-state], #vm-submit, #vm-form-panel, #vm-form-error,
#vms-table tr[data-vm=NAME] td.state, button[data-act=...],
#confirm-dialog, #confirm-ok, #console-status[data-state], #console-term,
.xterm-rows, #hosts-table tr[data-node=NAME] td.state, #events-table
tr[data-seq], #vnc-status[data-state], #flash.

Exits 0 when every step passed, 1 with a message naming the failed step.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

TRANSIENT = (
    StaleElementReferenceException,
    NoSuchElementException,
    ElementClickInterceptedException,
    ElementNotInteractableException,
)


class Failed(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--shots", required=True)
    p.add_argument("--vm", required=True)
    p.add_argument("--drain", required=True)
    p.add_argument("--expect-echo", default=None)
    p.add_argument("--console-line", default="echo hello-from-browser")
    p.add_argument("--upload", default=None, help="a file to upload as an image on the images page")
    p.add_argument("--upload-name", default="ui-upload")
    p.add_argument("--upload-storage", default="local")
    p.add_argument("--upload-kind", default="disk")
    p.add_argument("--console-ready", default=None, help="type only once the console shows this text")
    p.add_argument("--allow-console-error", action="store_true")
    p.add_argument("--skip-vnc", action="store_true")
    p.add_argument("--expect-vnc", action="store_true", help="the graphical console must open and draw")
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--resolve", default="127.0.0.1", help="the address kvmesh-node maps to")
    p.add_argument("--memory", default="64", help="the VM's memory in MiB")
    p.add_argument("--kernel", default=None, help="a kernel image to boot the VM from (the form's select)")
    p.add_argument("--initrd", default=None, help="an initrd image, with --kernel")
    p.add_argument("--cmdline", default=None, help="the kernel command line, with --kernel")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    return p.parse_args()


def expected_severe(args):
    """Per step: regexes of SEVERE browser-log messages that are expected there."""
    vm = re.escape(args.vm)
    return {
        # The page asks for the session first: 401 until signed in.
        "a": [r"/ui/session - Failed to load resource: the server responded with a status of 401"],
        # While the form is typed in, the preview may ask with a spec the
        # scheduler refuses (shown in the preview, which must end "ready").
        "c": [rf"/api/v1/vms/[^/ ]+/explain - Failed to load resource: the server responded with a status of 4\d\d"],
        "d": [rf"/api/v1/vms/{vm}/serial.*(failed|Failed)"] if args.allow_console_error else [],
        # The embedded test driver has no VNC: the socket is refused or closed
        # with a reason, which noVNC logs as an error.
        "g": [
            rf"/api/v1/vms/{vm}/vnc.*(failed|Failed)",
            r"/ui/vendor/novnc-1\.7\.0/core/\S+\.js .*(Failed when connecting|Connection closed|Unexpected server disconnect)",
        ],
    }


def make_home(ca):
    home = tempfile.mkdtemp(prefix="kvmesh-ui-")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb)
    db = f"sql:{nssdb}"
    for cmd in (
        ["certutil", "-d", db, "-N", "--empty-password"],
        ["certutil", "-d", db, "-A", "-t", "C,,", "-n", "kvmesh-ca", "-i", ca],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise Failed(f"setup: {' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return home


def start_browser(args, home):
    o = Options()
    o.binary_location = args.chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={home}/profile",
        f"--host-resolver-rules=MAP kvmesh-node {args.resolve}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(args.chromedriver, env={**os.environ, "HOME": home})
    return webdriver.Chrome(service=service, options=o)


class Run:
    def __init__(self, args, driver):
        self.a = args
        self.d = driver
        self.n = 0
        self.step = "setup"
        self.allowed = expected_severe(args)
        self.severe = []

    # ---- helpers

    def shot(self, name):
        self.n += 1
        path = os.path.join(self.a.shots, f"{self.n:02d}-{name}.png")
        self.d.save_screenshot(path)
        return path

    def wait(self, what, cond, timeout=20):
        """WebDriverWait until cond(driver) is truthy; transient DOM errors retry."""
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.2, ignored_exceptions=TRANSIENT).until(cond)
        except TimeoutException:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}") from None

    def css(self, sel, root=None):
        return (root or self.d).find_element(By.CSS_SELECTOR, sel)

    def visible(self, sel, timeout=20):
        return self.wait(f"{sel} to be visible", lambda d: (e := self.css(sel)).is_displayed() and e, timeout)

    def text(self, sel):
        try:
            return self.css(sel).text.strip()
        except TRANSIENT:
            return ""

    def click(self, sel, timeout=20):
        """Clicks sel once it is visible and enabled (re-finding it if the page re-rendered)."""

        def go(d):
            e = self.css(sel)
            if not (e.is_displayed() and e.is_enabled()):
                return False
            e.click()
            return True

        self.wait(f"{sel} to be clickable", go, timeout)

    def nav(self, page, ready_sel):
        self.click(f"#nav-{page}")
        self.wait(f"the {page} page", lambda d: self.css("#view").get_attribute("data-page") == page)
        return self.visible(ready_sel)

    def flash_error(self):
        try:
            e = self.css("#flash.error")
            return e.text.strip() if e.is_displayed() else ""
        except TRANSIENT:
            return ""

    def confirm(self):
        self.wait("the confirm dialog", lambda d: self.css("#confirm-dialog").get_attribute("open") is not None)
        self.click("#confirm-ok")
        self.wait("the confirm dialog to close", lambda d: self.css("#confirm-dialog").get_attribute("open") is None)

    def check_logs(self):
        """Drains the browser log, keeping SEVERE entries this step does not expect."""
        try:
            entries = self.d.get_log("browser")
        except WebDriverException:
            return
        allowed = [re.compile(p) for p in self.allowed.get(self.step, [])]
        for e in entries:
            if e.get("level") != "SEVERE":
                continue
            msg = e.get("message", "")
            if any(p.search(msg) for p in allowed):
                continue
            self.severe.append(f"step ({self.step}): {msg}")

    def passed(self, text):
        self.check_logs()
        print(f"ok ({self.step}) {text}", flush=True)

    # ---- steps

    def login(self):
        self.step = "a"
        self.d.get(self.a.url)
        self.visible("#login-form")
        self.visible("#login-token")
        self.shot("login")
        self.css("#login-token").send_keys(self.a.token)
        self.click("#login-submit")

        def signed_in(d):
            err = self.css("#login-error")
            if err.is_displayed() and err.text.strip():
                raise Failed(f"login refused: {err.text.strip()}")
            return self.css("#app").is_displayed() and self.text("#hdr-status").startswith("answered by")

        self.wait("the signed-in header (answered by …)", signed_in)
        self.passed(f"login: header says {self.text('#hdr-status')!r}, user {self.text('#hdr-user')!r}")

    def dashboard(self):
        self.step = "b"
        self.nav("dashboard", "#dash-leader")
        self.wait("the leader on the dashboard", lambda d: self.text("#dash-leader") not in ("", "…"))
        leader = self.text("#dash-leader")
        if leader == "none":
            raise Failed("the dashboard shows no leader")
        self.wait("the answering node", lambda d: self.text("#dash-answered") not in ("", "…"))
        rows = self.wait("hosts on the dashboard", lambda d: d.find_elements(By.CSS_SELECTOR, "#dash-hosts tbody tr[data-node]"))
        names = [r.get_attribute("data-node") for r in rows]
        if self.a.drain != "auto" and self.a.drain not in names:
            raise Failed(f"the dashboard's hosts {names} do not include --drain {self.a.drain}")
        header = self.text("#hdr-status")
        if f"leader {leader}" not in header:
            raise Failed(f"the header {header!r} does not name the leader {leader}")
        self.shot("dashboard")
        self.passed(f"dashboard: leader {leader}, answered by {self.text('#dash-answered')}, hosts {', '.join(names)}")

    def create_vm(self):
        self.step = "c"
        vm = self.a.vm
        self.nav("vms", "#vm-new")
        if self.d.find_elements(By.CSS_SELECTOR, f'#vms-table tr[data-vm="{vm}"]'):
            raise Failed(f"a VM named {vm} exists already: pick another --vm")
        self.click("#vm-new")
        self.visible("#vm-form")
        for sel, value in (("#vm-name", vm), ("#vm-vcpus", "1"), ("#vm-memory", self.a.memory)):
            e = self.css(sel)
            e.clear()
            e.send_keys(value)
        for sel, value in (("#vm-kernel", self.a.kernel), ("#vm-initrd", self.a.initrd)):
            if value:
                self.wait(f"{value} among the images", lambda d: d.find_elements(By.CSS_SELECTOR, f'{sel} option[value="{value}"]'))
                Select(self.css(sel)).select_by_value(value)
        if self.a.cmdline:
            self.css("#vm-cmdline").send_keys(self.a.cmdline)
        # The preview must answer for this very spec before submitting.
        self.wait("the scheduler preview", lambda d: self.css("#vm-preview").get_attribute("data-state") in ("ready", "error"), 30)
        # (a last keystroke may still be debounced: wait until it settles)
        self.wait("the preview to settle", lambda d: "loading" not in (self.css("#vm-preview").get_attribute("class") or ""))
        if self.css("#vm-preview").get_attribute("data-state") != "ready":
            raise Failed(f"the scheduler preview failed: {self.text('#vm-preview')}")
        preview = self.text("#vm-preview")
        self.shot("vm-form-preview")
        chosen = self.text("#vm-preview-chosen")
        self.click("#vm-submit")

        def made(d):
            for err in d.find_elements(By.CSS_SELECTOR, "#vm-form-error"):
                if err.is_displayed() and err.text.strip():
                    raise Failed(f"creating the VM failed: {err.text.strip()}")
            return not self.css("#vm-form-panel").is_displayed()

        self.wait("the create form to close", made, 60)
        row = f'#vms-table tr[data-vm="{vm}"]'
        self.wait(f"{vm} in the list", lambda d: self.css(row))

        def running(d):
            s = self.text(f"{row} td.state")
            if s.split(" ")[0] in ("failed", "crashed"):
                raise Failed(f"{vm} is {s}: {self.css(row + ' td.state').get_attribute('title')}")
            return s.startswith("running")

        self.wait(f"{vm} running", running, self.a.timeout)
        host = self.text(f"{row} td.host")
        self.vm_host = host
        self.shot("vm-running")
        first = preview.splitlines()[0] if preview else ""
        self.passed(f"vm: {vm} created (preview: {first!r}, chosen {chosen or '-'}) and running on {host}")

    def console(self):
        self.step = "d"
        vm = self.a.vm
        self.click(f'#vms-table tr[data-vm="{vm}"] button[data-act="console"]')
        self.wait("the console page", lambda d: self.css("#view").get_attribute("data-page") == "console")
        self.wait("the terminal", lambda d: self.css("#console-term .xterm-rows"))
        st = self.wait("the console to connect or close",
                       lambda d: (s := self.css("#console-status").get_attribute("data-state")) in ("open", "error", "closed") and s, 30)
        if st != "open":
            reason = self.text("#console-status")
            self.shot("console-closed")
            if self.a.allow_console_error and reason:
                self.passed(f"console: closed by the node with a reason shown: {reason!r}")
                return
            raise Failed(f"the serial console did not open: {reason!r}")
        if self.a.console_ready:
            # A guest still booting reads nothing of what is typed.
            self.wait(f"{self.a.console_ready!r} on the console (the guest is up)",
                      lambda d: self.a.console_ready in self.css("#console-term .xterm-rows").text, self.a.timeout)
        # Type into xterm: focus its hidden textarea through a click on the screen.
        self.click("#console-term .xterm-screen")
        ActionChains(self.d).send_keys(self.a.console_line).send_keys(Keys.ENTER).perform()
        shown = ""
        if self.a.expect_echo:
            self.wait(f"{self.a.expect_echo!r} on the console",
                      lambda d: self.a.expect_echo in self.css("#console-term .xterm-rows").text, 30)
            shown = self.css("#console-term .xterm-rows").text
        else:
            # Echo is optional here: wait (bounded) for any text, then go on.
            try:
                WebDriverWait(self.d, 5, ignored_exceptions=TRANSIENT).until(
                    lambda d: self.css("#console-term .xterm-rows").text.strip())
            except TimeoutException:
                pass
            shown = self.css("#console-term .xterm-rows").text
        if self.css("#console-status").get_attribute("data-state") == "error":
            raise Failed(f"the console closed: {self.text('#console-status')!r}")
        self.shot("console")
        lines = [ln for ln in shown.splitlines() if ln.strip()]
        self.passed(f"console: typed {self.a.console_line!r}; terminal shows {len(lines)} line(s)"
                    + (f", last {lines[-1]!r}" if lines else " (no echo)"))

    def newest_event_seq(self):
        self.nav("events", "#events-table")
        rows = self.d.find_elements(By.CSS_SELECTOR, "#events-table tbody tr[data-seq]")
        return int(rows[0].get_attribute("data-seq")) if rows else 0

    def drain(self):
        self.step = "e"
        node = self.a.drain
        self.baseline = self.newest_event_seq()
        self.nav("hosts", "#hosts-table")
        if node == "auto":
            # A host that does not run the new VM (a drain would move it).
            self.wait("the hosts", lambda d: d.find_elements(By.CSS_SELECTOR, "#hosts-table tr[data-node]"))
            names = [r.get_attribute("data-node") for r in self.d.find_elements(By.CSS_SELECTOR, "#hosts-table tr[data-node]")]
            others = [n for n in names if n != getattr(self, "vm_host", None)]
            if not others:
                raise Failed(f"no host besides the VM's among {names}")
            node = others[-1]
        self.drained = node
        row = f'#hosts-table tr[data-node="{node}"]'
        self.wait(f"{node} in the hosts table", lambda d: self.css(row))
        state0 = self.text(f"{row} td.state")
        if state0 != "up":
            raise Failed(f"{node} is {state0!r} before the drain, not up")
        self.click(f"{row} button.act-drain")
        self.confirm()

        def out(d):
            if err := self.flash_error():
                raise Failed(f"drain refused: {err}")
            return self.text(f"{row} td.state") in ("draining", "maintenance")

        self.wait(f"{node} draining or drained", out, self.a.timeout)
        drained = self.text(f"{row} td.state")
        self.shot("host-drained")
        # Activate once it is out of placement (enabled for draining and maintenance).
        self.click(f"{row} button.act-activate", self.a.timeout)
        self.confirm()

        def up(d):
            if err := self.flash_error():
                raise Failed(f"activate refused: {err}")
            return self.text(f"{row} td.state") == "up"

        self.wait(f"{node} up again", up, self.a.timeout)
        self.shot("host-activated")
        self.passed(f"hosts: {node} drained ({drained}) and activated (up)")

    def events(self):
        self.step = "f"
        node = self.drained
        self.nav("events", "#events-table")
        pattern = re.compile(rf"\bnode {re.escape(node)}\b.*\bdrain", re.I)

        def found(d):
            for r in d.find_elements(By.CSS_SELECTOR, "#events-table tbody tr[data-seq]"):
                if int(r.get_attribute("data-seq")) <= self.baseline:
                    break  # newest first: the rest are older
                msg = r.find_element(By.CSS_SELECTOR, "td.message").text
                if pattern.search(msg):
                    return msg
            return False

        msg = self.wait(f"the drain event of {node} (after seq {self.baseline})", found, 30)
        live = self.d.find_elements(By.CSS_SELECTOR, "#hdr-live.on")
        if not live:
            raise Failed("the live event stream indicator is off")
        self.shot("events")
        self.passed(f"events: {msg!r} arrived live (after seq {self.baseline}, no reload)")

    def vnc(self):
        self.step = "g"
        vm = self.a.vm
        self.nav("vms", "#vms-table")
        self.click(f'#vms-table tr[data-vm="{vm}"] button[data-act="vnc"]')
        self.wait("the VNC page", lambda d: self.css("#view").get_attribute("data-page") == "vnc")
        st = self.wait("the graphical console to connect or close",
                       lambda d: (s := self.css("#vnc-status").get_attribute("data-state")) in ("open", "error", "closed") and s, 30)
        text = self.text("#vnc-status")
        if st == "open":
            self.wait("the VNC canvas", lambda d: self.css("#vnc-screen canvas"))
        elif self.a.expect_vnc:
            raise Failed(f"the graphical console did not open: {text!r}")
        elif not text:
            raise Failed("the graphical console closed without saying why")
        self.shot("vnc")
        self.passed(f"vnc: {st}: {text!r}")

    def resources(self):
        self.step = "i"
        self.nav("storage", "#storage-table")
        self.wait("storage domains", lambda d: d.find_elements(By.CSS_SELECTOR, "#storage-table tr[data-storage]"))
        self.shot("storage")
        self.nav("networks", "#networks-table")
        self.shot("networks")
        said = ""
        if self.a.upload:
            name = self.a.upload_name
            self.nav("images", "#image-form")
            self.wait("storage domains to upload to",
                      lambda d: d.find_elements(By.CSS_SELECTOR, f'#image-storage option[value="{self.a.upload_storage}"]'))
            self.css("#image-file").send_keys(os.path.abspath(self.a.upload))
            e = self.css("#image-name")
            e.clear()
            e.send_keys(name)
            Select(self.css("#image-storage")).select_by_value(self.a.upload_storage)
            Select(self.css("#image-kind")).select_by_value(self.a.upload_kind)
            self.click("#image-submit")

            def listed(d):
                if err := self.flash_error():
                    raise Failed(f"the upload failed: {err}")
                return d.find_elements(By.CSS_SELECTOR, f'#images-table tr[data-image="{name}"]')

            self.wait(f"{name} in the images", listed, self.a.timeout)
            said = f", uploaded {name} ({os.path.getsize(self.a.upload)} bytes)"
        self.nav("images", "#images-table")
        self.shot("images")
        self.passed(f"resources: storage, networks and images pages{said}")

    def logs(self):
        self.step = "h"
        self.check_logs()
        if self.severe:
            raise Failed("unexpected SEVERE browser log entries:\n  " + "\n  ".join(self.severe))
        print("ok (h) browser log: no unexpected SEVERE entries", flush=True)


def main():
    args = parse_args()
    state = {}
    try:
        return steps(args, state)
    finally:
        if state.get("driver") is not None:
            try:
                state["driver"].quit()
            except WebDriverException:
                pass
        if state.get("home"):
            shutil.rmtree(state["home"], ignore_errors=True)


def steps(args, state):
    os.makedirs(args.shots, exist_ok=True)
    for tool in ("certutil", args.chromium, args.chromedriver):
        if not shutil.which(tool):
            print(f"FAIL setup: {tool} not found", file=sys.stderr)
            return 1
    home = None
    driver = None
    run = None
    try:
        home = state["home"] = make_home(args.ca)
        driver = state["driver"] = start_browser(args, home)
        driver.set_page_load_timeout(30)
        run = Run(args, driver)
        run.login()
        run.dashboard()
        run.create_vm()
        run.console()
        run.drain()
        run.events()
        if not args.skip_vnc:
            run.vnc()
        run.resources()
        run.logs()
        print("ui_browser: all steps passed", flush=True)
        return 0
    except Failed as e:
        step = run.step if run else "setup"
        print(f"FAIL ({step}): {e}", file=sys.stderr, flush=True)
    except WebDriverException as e:
        step = run.step if run else "setup"
        print(f"FAIL ({step}): webdriver: {e.msg or e}", file=sys.stderr, flush=True)
    except Exception:
        step = run.step if run else "setup"
        print(f"FAIL ({step}): {traceback.format_exc()}", file=sys.stderr, flush=True)
    # Failure: a screenshot and the browser's log help to see why.
    if driver is not None:
        try:
            driver.save_screenshot(os.path.join(args.shots, "99-failure.png"))
            for e in driver.get_log("browser"):
                print(f"  browser {e.get('level')}: {e.get('message')}", file=sys.stderr)
        except WebDriverException:
            pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
