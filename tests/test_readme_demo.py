"""The README's demo numbers are what ``make demo`` prints (see tests/readme_demo.py)."""

import json

import pytest

from tests import readme_demo


def _record() -> dict:
    return json.loads(readme_demo.RECORD.read_text())


def test_readme_shows_the_recorded_demo_output():
    printed = _record()["printed"]
    assert readme_demo.readme_block() == printed, "rerun `make demo-readme`"
    assert printed[0].startswith("fitted ") and any("held-out log-likelihood" in p for p in printed)


def test_the_recorded_demo_ran_with_todays_defaults():
    """A change of the command's or the estimator's defaults changes the demo's numbers: this
    fails until `make demo-readme` has rerun the demo and rewritten the README."""
    assert _record()["settings"] == readme_demo.settings(), "rerun `make demo-readme`"


def test_printed_summary_masks_only_the_seconds():
    stdout = (
        "fitted 2 spline_coupling flows to 1000 rows x 2 columns (demo set two_moons)\n"
        "  900 steps (early stopping) in 93.9 s\n"
        "  held-out log-likelihood: -0.850 per row (100 rows)\n"
        "wrote mixflows-demo/: model.pt\n"
    )
    assert readme_demo.printed_summary(stdout) == [
        "fitted 2 spline_coupling flows to 1000 rows x 2 columns (demo set two_moons)",
        "  900 steps (early stopping) in ... s",
        "  held-out log-likelihood: -0.850 per row (100 rows)",
    ]


@pytest.mark.slow
def test_make_demo_prints_the_readme_numbers():
    """The demo itself (about 30-100 s on 2 cores): what it prints today is the README's."""
    assert readme_demo.run_demo() == readme_demo.readme_block(), "rerun `make demo-readme`"
