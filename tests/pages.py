"""Playwright steps that several browser tests take the same way, as a person would on the page."""
from __future__ import annotations


def open_tab(browser, url: str, tab: str, *, width: int = 1500, height: int = 1300):
    """A new page on the dashboard at ``url`` with ``tab`` selected."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.get_by_role("tab", name=tab, exact=True).click()
    return page


def start_training_from_the_tab(page, dataset: str, *, max_steps: int, batch_size: int | None = None,
                                max_length: int | None = None, report_to: tuple[str, ...] = ()) -> None:
    """On the Train tab: type the dataset (a path or a dataset's name) and Enter, set the steps (and the batch size
    and max length where given; ``report_to``: tick these trackers' labels under Advanced), press Start training."""
    ds = page.get_by_label("Training data", exact=True)
    ds.fill(dataset)
    ds.press("Enter")
    page.get_by_label("Max steps (-1 = epochs)").fill(str(max_steps))
    if batch_size is not None:
        page.get_by_label("Batch size").fill(str(batch_size))
    if max_length is not None:
        page.get_by_label("Max length (tokens)").fill(str(max_length))
    if report_to:
        page.get_by_role("button", name="Advanced").click()
        for label in report_to:
            page.locator("#train-report-to").get_by_label(label, exact=True).check()
    page.get_by_role("button", name="Start training").click()
