"""The pipeline's stages are declared once (ganops.config.STAGES) and every place that wires a stage agrees."""

from __future__ import annotations

from pathlib import Path

import yaml

from ganops.config import STAGES, Params

ROOT = Path(__file__).resolve().parents[2]


def test_every_stage_has_a_command_a_section_a_dvc_stage_and_a_tracking_policy():
    from typer.main import get_command

    from ganops.cli import app
    from ganops.stage_runner import STAGES as flow_stages
    from ganops.tracking.stages import STAGE_POLICIES

    commands = set(get_command(app).commands)
    sections = {info.alias or name for name, info in Params.model_fields.items()}
    dvc_stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert flow_stages == STAGES == tuple(STAGE_POLICIES)
    assert dvc_stages == list(STAGES)  # dvc.yaml lists them in pipeline order
    for stage in STAGES:
        assert stage in commands, f"no `ganops {stage}` command in cli.py"
        assert stage in sections, f"no {stage} section in config.Params"
