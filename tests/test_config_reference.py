"""docs/configuration.md is generated from the settings object and must be current."""
from __future__ import annotations

from pathlib import Path

from mmrec.cli import main
from mmrec.commands.config_reference import DEFAULT_PATH, env_name, render
from mmrec.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_reference_is_current():
    assert (ROOT / DEFAULT_PATH).read_text() == render(), "run `mmrec config-reference` and commit docs/configuration.md"


def test_every_setting_is_in_the_reference_once_with_a_meaning():
    text = render()
    for name, field in Settings.model_fields.items():
        assert text.count(f"| `{env_name(name)}` |") == 1, name
        assert field.description, f"{name} has no description"


def test_check_mode_of_the_command(tmp_path: Path):
    out = tmp_path / "configuration.md"
    assert main(["config-reference", "--check", "--out", str(out)]) == 1  # missing
    assert main(["config-reference", "--out", str(out)]) == 0
    assert main(["config-reference", "--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("MMREC_TOP_K", "MMREC_TOPK"))
    assert main(["config-reference", "--check", "--out", str(out)]) == 1
