"""The Evaluate and Playground tabs in headless Chromium against the real app, on the trained demo run: both panes
stream at once, a blind vote updates the leaderboard, becomes preference data and measures an LLM judge, an evaluation
started from the tab shows its metrics."""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.pages import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_both_panes_stream_and_a_blind_vote_updates_the_leaderboard(demo_ws, start_app, browser):
    url = start_app(demo_ws["ws"] / "app-playground.log")
    page = open_tab(browser, url, "Playground")
    # the newest run is preselected against the base once the page has loaded its lists
    expect(page.locator("#pg-model-b input")).to_have_value(f"run #{demo_ws['run_id']} quickstart-lora (lora)",
                                                            timeout=20_000)
    # blind voting is in sight, not inside the collapsed generation settings (issue 31)
    page.get_by_label("Blind A/B: shuffle the sides and vote").check()
    page.locator("#pg-prompt textarea").fill("I ordered a desk lamp (order A4821) and it arrived broken. "
                                             "Please help, this is urgent.")
    page.get_by_text("Generation settings").click()
    page.locator("#pg-max-new input").fill("64")  # long enough to watch both stream, not the base's 256 rambling
    page.get_by_role("button", name="Send to both").click()
    # both panes fill while the other is still going: sample their text as it streams
    seen_a, seen_b, both_growing = set(), set(), 0
    deadline = time.time() + 120
    while time.time() < deadline:
        a = page.locator("#pg-pane-a").inner_text()
        b = page.locator("#pg-pane-b").inner_text()
        if a not in seen_a and b not in seen_b and seen_a and seen_b:
            both_growing += 1
        seen_a.add(a)
        seen_b.add(b)
        if "tokens/s" in page.locator("#pg-stats-a").inner_text() and \
                "tokens/s" in page.locator("#pg-stats-b").inner_text():
            break
        time.sleep(0.1)
    assert len(seen_a) > 3 and len(seen_b) > 3, "the answers did not stream"
    assert both_growing >= 1, "the two panes never grew at the same time"
    page.screenshot(path=str(demo_ws["ws"] / "playground.png"), full_page=True)
    expect(page.get_by_text("Vote below")).to_be_visible()
    page.get_by_role("button", name="B is better").click()
    expect(page.locator("#pg-reveal")).to_contain_text("Vote stored", timeout=10_000)
    reveal = page.locator("#pg-reveal").inner_text()
    assert "quickstart-lora" in reveal and "SmolLM2" in reveal  # both sides revealed after the vote
    board = page.locator("#pg-board")
    expect(board).to_contain_text("quickstart-lora")
    expect(board).to_contain_text("1016")  # one vote moved the winner from 1000 to 1016
    page.screenshot(path=str(demo_ws["ws"] / "playground-voted.png"), full_page=True)
    # the vote becomes preference data (issue 28): what it would use, then one button makes the dataset
    page.get_by_text("Preference data from votes (for DPO / ORPO)").click()
    expect(page.locator("#pg-pref-plan")).to_contain_text("1 vote → 1 preference pair", timeout=10_000)
    page.get_by_role("button", name="Make preference data from votes").click()
    expect(page.locator("#pg-pref-made")).to_contain_text("Ready for the DPO / ORPO objective", timeout=30_000)
    page.screenshot(path=str(demo_ws["ws"] / "playground-preference-data.png"), full_page=True)
    # the embedded model judges the votes from the Evaluate tab (issue 28): its agreement with the people who voted,
    # whatever its value, stands beside its scores, with the warning that one vote cannot earn a judge any trust
    from core.evaluate import arena

    n_votes = len(arena.all_votes())
    page.get_by_role("tab", name="Evaluate", exact=True).click()
    page.get_by_text("Judge: an LLM judge, measured against the people's votes").click()
    expect(page.locator("#judge-model input")).to_have_value("the embedded model (default)", timeout=20_000)
    page.get_by_role("button", name="Start judge").click()
    expect(page.locator("#judge-msg")).to_contain_text("Judge job", timeout=20_000)
    agreement = page.locator("#judge-agreement")
    expect(agreement).to_contain_text("Cohen's κ", timeout=400_000)
    expect(agreement).to_contain_text(f"n (votes) {n_votes}")
    expect(page.locator("#judge-warning")).to_contain_text("too few to trust")
    expect(page.locator("#judge-scores")).to_contain_text("judge's win rate")
    expect(page.locator("#judge-table")).to_contain_text("vote #")
    page.locator("#judge-box").screenshot(path=str(demo_ws["ws"] / "evaluate-judge.png"))


def test_an_evaluation_started_from_the_tab_shows_its_metrics(demo_ws, start_app, browser):
    url = start_app(demo_ws["ws"] / "app-evaluate.log")
    page = open_tab(browser, url, "Evaluate", height=1500)
    expect(page.locator("#eval-run input")).to_have_value(f"#{demo_ws['run_id']} quickstart-lora (lora, succeeded)",
                                                          timeout=20_000)
    limit = page.get_by_label("Sample (rows)")
    limit.fill("6")
    page.get_by_label("Max new tokens").fill("40")
    page.get_by_role("button", name="Start evaluation").click()
    expect(page.locator("#eval-msg")).to_contain_text("Evaluation job", timeout=20_000)
    expect(page.locator("#eval-summary")).to_contain_text("field_accuracy", timeout=300_000)
    metrics = page.locator("#eval-metrics")
    expect(metrics).to_contain_text("json_valid_rate")
    expect(page.locator("#eval-examples")).to_contain_text("user:")
    page.screenshot(path=str(demo_ws["ws"] / "evaluate.png"), full_page=True)
