"""``--json`` of the bench commands: checked and its folder made before a long run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.bench.json_rows import prepare_json_target, write_json_rows
from services.cli import main
from services.recon.errors import InputError


def test_json_target_folder_is_created_and_rows_written(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "rows.json"
    prepare_json_target(target)
    assert target.parent.is_dir() and not target.exists()
    write_json_rows(target, ({"method": m, "auroc": 0.5} for m in ("a", "b")))
    assert json.loads(target.read_text()) == [
        {"method": "a", "auroc": 0.5},
        {"method": "b", "auroc": 0.5},
    ]
    prepare_json_target(None)
    write_json_rows(None, [{"ignored": 1}])


def test_json_target_that_cannot_be_a_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        prepare_json_target(tmp_path)
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot create its folder"):
        prepare_json_target(blocker / "rows.json")


def test_bench_commands_refuse_a_bad_json_path_before_computing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    target = str(blocker / "rows.json")
    for command in (["bench", "anomaly", "--methods", "zscore"], ["bench", "recon"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--json", target])
        message = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(message.splitlines()) == 1
        assert "cannot create its folder" in message
