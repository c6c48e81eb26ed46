"""Reading instruction data sets: every bad row reported with its number, or skipped on request."""

# ruff: noqa: RUF001 (the data set is Chinese: its full-width punctuation is meant)

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from loragate.adapters.training.dataset import DatasetError, load_dataset
from loragate.cli import main

HUANHUAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "huanhuan.json"
GOOD = {"instruction": "你是谁？", "input": "", "output": "我是甄嬛。"}
BAD_ROWS = [
    GOOD,
    {"instruction": "皇上驾到！", "input": ""},  # 2: no output
    {"instruction": "娘娘。", "input": "", "output": "   "},  # 3: empty output
    {"instruction": 7, "input": "", "output": "是。"},  # 4: wrong type
    ["not", "an", "object"],  # 5
    {"instruction": "", "input": "", "output": "嗯。"},  # 6: nothing to answer
    {"instruction": "问", "output": "答", "history": [["only one"]]},  # 7: broken history
    GOOD,
]


def write_json(tmp_path: Path, rows: object) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_the_real_data_set_loads() -> None:
    data = load_dataset(HUANHUAN)
    assert len(data.rows) == 3729 and not data.skipped
    assert data.sha256 == hashlib.sha256(HUANHUAN.read_bytes()).hexdigest()
    first = data.rows[0]
    assert (first.number, first.instruction, first.input) == (1, "娘娘。", "")
    assert first.output == "你放心，本宫到任何时候都不会自轻自贱委屈了这孩子。"
    assert len(load_dataset(HUANHUAN, max_rows=10).rows) == 10


def test_bad_rows_stop_the_run_with_their_numbers(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset(write_json(tmp_path, BAD_ROWS))
    message = str(caught.value)
    assert "6 bad row(s)" in message and "--skip-bad-rows" in message
    for expected in (
        "row 2: 'output' is missing",
        "row 3: 'output' is empty",
        "row 4: 'instruction' must be a string, got int",
        "row 5: expected an object, got a list",
        "row 6: 'instruction' and 'input' are both empty",
        "row 7: 'history'[0] must be a [user, assistant] pair of strings",
    ):
        assert expected in message
    assert "row 1" not in message and "row 8" not in message


def test_skip_bad_rows_keeps_the_good_ones(tmp_path: Path) -> None:
    data = load_dataset(write_json(tmp_path, BAD_ROWS), skip_bad_rows=True)
    assert [r.number for r in data.rows] == [1, 8]
    assert [p.number for p in data.skipped] == [2, 3, 4, 5, 6, 7]


def test_jsonl_rows_are_numbered_by_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps(GOOD, ensure_ascii=False),
        "",
        "{not json",
        json.dumps({"instruction": "问", "output": "答", "system": ["x"]}),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert "row 3: not valid JSON" in str(caught.value)
    assert "row 4: 'system' must be a string, got a list" in str(caught.value)


def test_system_history_and_optional_input(tmp_path: Path) -> None:
    rows = [
        {
            "instruction": "你是谁？",
            "output": "我是甄嬛。",
            "system": "你是甄嬛。",
            "history": [["皇上驾到！", "皇上万福金安。"], {"role": "user", "content": "平身"}],
        }
    ]
    (row,) = load_dataset(write_json(tmp_path, rows)).rows
    assert row.input == "" and row.system == "你是甄嬛。"
    assert [m["role"] for m in row.history] == ["user", "assistant", "user"]
    assert row.history[1]["content"] == "皇上万福金安。"


def test_unusable_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a",', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"not valid JSON: .* \(line 1, column"):
        load_dataset(broken)
    with pytest.raises(DatasetError, match="cannot read the data set"):
        load_dataset(tmp_path / "missing.json")
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset(write_json(tmp_path, [{"instruction": "a", "output": ""}]), skip_bad_rows=True)


def test_cli_reports_bad_rows_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(write_json(tmp_path, BAD_ROWS)), "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("loragate train: ") and "row 2: 'output' is missing" in err
    assert "Traceback" not in err


def test_cli_requires_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    assert "--data is required" in capsys.readouterr().out
