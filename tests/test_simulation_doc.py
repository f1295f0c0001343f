"""docs/simulation.md shows exactly the example test the suite runs (tests/test_sim_example.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_example_is_the_one_the_suite_runs():
    doc = (ROOT / "docs" / "simulation.md").read_text()
    example = (ROOT / "tests" / "test_sim_example.py").read_text()
    block = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == example
