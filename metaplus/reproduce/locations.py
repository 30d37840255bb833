"""Where the reproduction lives in the checkout: its runs, calibrations, JSON and markdown.

Other modules read these as ``locations.RUNS`` (never copied by ``from ... import``) so that a test or a
caller can point them elsewhere in one place.
"""

from __future__ import annotations

from pathlib import Path

# The checkout the runs train in (``python train.py`` there) and write to: metaplus/reproduce/ is two levels down.
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
RUNS = RESULTS / "reproduction"
JSON_OUT = RESULTS / "reproduction.json"
DOC_OUT = REPO / "docs" / "reproduction.md"
CALIBRATION = RUNS / "calibration.json"
PARITY_JSON = RESULTS / "parity.json"  # written by bench/parity.py --publish
# The quick group proves the pipeline end to end on every call: its 2-minute runs, table and calibrations
# live apart from the committed reproduction (which they would otherwise skip as done, or overwrite).
QUICK_RUNS = REPO / "outputs" / "reproduction-quick"


def relative(path: Path) -> str:
    """``path`` from the repository root when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
