"""Every example config is valid and starts with the exact command that runs it."""

from pathlib import Path

import pytest

from midblock.experiments.grid import CompareConfig, load_grid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


ACCELERATE = sorted(EXAMPLES.glob("accelerate_*.yaml"))
GRIDS = sorted(set(EXAMPLES.glob("*.yaml")) - set(ACCELERATE))


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_compare_grids_validate(path):
    first = path.read_text().splitlines()[0]
    assert first == f"# midblock compare --config examples/{path.name} --out " + first.split("--out ")[1]
    cc = CompareConfig.from_dict(load_grid(path))
    assert cc.baseline == "lora" and len(cc.cells()) >= 2


def test_shell_examples_start_with_their_command():
    for path in EXAMPLES.glob("*.sh"):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#!") and lines[1] == f"# bash examples/{path.name}"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_start_with_their_command(path):
    """accelerate configs (run for real by tests/tuning/test_fsdp.py) name the launch that uses them."""
    import yaml

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file examples/{path.name} ")
    assert "midblock train" in first
    assert yaml.safe_load(path.read_text())["num_processes"] >= 2
