"""Every example config is valid and starts with the exact command that runs it."""

from pathlib import Path

import pytest

from midblock.evaluation.compare import CompareConfig, load_grid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_compare_grids_validate(path):
    first = path.read_text().splitlines()[0]
    assert first == f"# midblock compare --config examples/{path.name} --out " + first.split("--out ")[1]
    cc = CompareConfig.from_dict(load_grid(path))
    assert cc.baseline == "lora" and len(cc.cells()) >= 2


def test_shell_examples_start_with_their_command():
    for path in EXAMPLES.glob("*.sh"):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#!") and lines[1] == f"# bash examples/{path.name}"
