"""The Deploy tab in headless Chromium against the real app: deploy the trained demo run locally from the tab, watch it
become running, send the smoke request and see the reply, stop it."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.pages import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_deploy_a_run_locally_from_the_tab_and_see_the_smoke_reply(demo_ws, start_app, browser):
    from core.deploy import deployments as D

    url = start_app(demo_ws["ws"] / "app-deploy.log")
    try:
        _deploy_from_the_tab(demo_ws, url, browser)
    finally:  # a failing step must not leave a server behind (servers outlive the app by design)
        for dep in D.list_deployments(active_only=True):
            D.stop(dep.id)


def _deploy_from_the_tab(demo_ws, url, browser):
    from core.deploy import deployments as D

    page = open_tab(browser, url, "Deploy", height=1600)
    # the run's export dropdown is filled when the page loads its lists
    expect(page.locator("#dep-export-run input")).to_have_value(f"#{demo_ws['run_id']} quickstart-lora (lora)",
                                                                timeout=20_000)
    page.locator("#dep-model input").click()
    page.get_by_role("option", name=f"#{demo_ws['run_id']} quickstart-lora (lora)").click()
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#dep-msg")).to_contain_text("Deployment #", timeout=20_000)
    details = page.locator("#dep-details")
    expect(details).to_contain_text("· running ·", timeout=240_000)  # merged, loaded, /health answered
    page.locator("#dep-smoke-out").scroll_into_view_if_needed()
    page.get_by_role("button", name="Send", exact=True).click()
    out = page.locator("#dep-smoke-out")
    expect(out).to_contain_text("Reply", timeout=120_000)
    expect(out).to_contain_text("Streaming")
    page.screenshot(path=str(demo_ws["ws"] / "deploy.png"), full_page=True)
    running = [d for d in D.list_deployments(active_only=True) if d.run_id == demo_ws["run_id"]]
    assert running and running[0].status == "running"
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(out).to_contain_text("stopped", timeout=30_000)
    assert D.get(running[0].id).status == "stopped" and D.port_is_free(running[0].port)
