"""The dashboard in headless Chromium, driven by Selenium: log in with a
one-time URL, see the seed's services, open one, watch a pod go unready
without a reload, log out. Screenshots of each page go to OUT.

Usage: dashboard_browser.py BASE_URL LOGIN_URL OUT
Talks to the test on stdout/stdin: prints MAKE_UNREADY and waits for a
line back once the test has stopped a pod's backend.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BASE, LOGIN_URL, OUT = sys.argv[1:4]
TIMEOUT = 60


def browser():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1440,900", "--hide-scrollbars", f"--user-data-dir={OUT}/profile",
        # wharf's own CA signs the API's certificate.
        "--ignore-certificate-errors",
        # Nothing leaves the machine: no updates, sync, pings or lookups.
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
        "--disable-client-side-phishing-detection", "--no-first-run", "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.*",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def until(what, check):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        try:
            found = check()
            if found:
                return found
        except Exception:  # the page re-renders: elements go stale
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def click(driver, css):
    """Clicks `css`; a live re-render may replace it between finding and
    clicking, so `until` tries again."""
    driver.find_element(By.CSS_SELECTOR, css).click()
    return True


def shot(driver, name):
    time.sleep(0.5)  # let the last render settle
    driver.save_screenshot(os.path.join(OUT, name))


def text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def main():
    # The test reads this process's stdout for the protocol; the browser
    # and its driver get stderr instead, so their lingering never holds it.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    driver = browser()
    try:
        driver.get(BASE + "/ui/")
        field = until("the login form", lambda: driver.find_element(By.ID, "login-token"))
        field.send_keys("not-a-token")
        driver.find_element(By.ID, "login-button").click()
        until("the refusal", lambda: "does not accept" in text(driver, "#login-error"))
        shot(driver, "login.png")

        driver.get(LOGIN_URL)
        until("the seed's services", lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="default/kolide-fleet-fleet"]'))
        for svc in ["kolide-fleet-mysql", "kolide-fleet-redis", "kolide-fleet-fleet"]:
            until(svc, lambda: driver.find_elements(By.CSS_SELECTOR, f'tr[data-service="default/{svc}"]'))
        assert "code=" not in driver.current_url, "the one-time code leaves the address bar"
        until("the user's name", lambda: text(driver, "#who"))
        mysql = 'tr[data-service="default/kolide-fleet-mysql"]'
        until("connections through mysql", lambda: text(driver, mysql + " td.conns") not in ("", "0"))
        until("a connection rate for mysql", lambda: text(driver, mysql + " td.rate") not in ("", "0/s"))
        shot(driver, "services.png")

        until("the service's link", lambda: click(driver, 'tr[data-service="default/kolide-fleet-fleet"] a'))
        # One read of the verdict for both checks: the page re-renders live,
        # and a second read may find the element replaced (stale).
        verdict = until("the chain", lambda: (lambda v: "First broken link" in v and v)(text(driver, "#verdict")))
        assert "kolide-fleet-fleet-b" in verdict, verdict
        until("fleet-a ready", lambda: driver.find_elements(By.CSS_SELECTOR, '#endpoints tr[data-ready="true"]'))
        until("fleet-b's probe error", lambda: "Readiness probe failed" in text(driver, "#endpoints"))
        shot(driver, "service.png")

        driver.execute_script("window.wharfNoReload = true;")
        print("MAKE_UNREADY", file=protocol, flush=True)
        sys.stdin.readline()
        until("fleet-a unready", lambda: not driver.find_elements(By.CSS_SELECTOR, '#endpoints tr[data-ready="true"]'))
        assert driver.execute_script("return window.wharfNoReload === true;"), "the page was reloaded"
        until("no ready endpoint in the chain", lambda: "0 of 2 endpoints ready" in text(driver, "#chain"))
        shot(driver, "service-unready.png")

        driver.find_element(By.CSS_SELECTOR, 'a[data-page="nodes"]').click()
        until("the node's proxy, synced", lambda: text(driver, "#nodes td.proxy-sync") == "synced")
        until("the node's DNS, synced", lambda: text(driver, "#nodes td.dns-sync").startswith("synced, "))
        shot(driver, "nodes.png")

        session = driver.execute_script("return sessionStorage.getItem('wharf-token');")
        assert session and session.startswith("wharf-session."), session
        driver.find_element(By.ID, "logout").click()
        until("the login form again", lambda: driver.find_element(By.ID, "login-token"))
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/v1/services', {headers: {Authorization: 'Bearer ' + arguments[0]}}).then(r => done(r.status));",
            session)
        assert status == 401, f"an ended session still works: {status}"
    except Exception:
        driver.save_screenshot(os.path.join(OUT, "failure.png"))
        for entry in driver.get_log("browser"):
            print("browser:", entry, file=sys.stderr)
        raise
    finally:
        driver.quit()
        protocol.close()


if __name__ == "__main__":
    main()
