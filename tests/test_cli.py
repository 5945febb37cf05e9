from __future__ import annotations

import json

import polars as pl
import pytest

from recsys.cli import main


@pytest.mark.parametrize(
    "command", [[], ["generate"], ["prepare"], ["train"], ["evaluate"], ["recommend"]]
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: recsys" in capsys.readouterr().out


def test_generate_then_prepare(tmp_path, capsys):
    log = tmp_path / "log.parquet"
    assert (
        main(
            [
                "generate",
                "--output",
                str(log),
                "--users",
                "50",
                "--items",
                "40",
                "--interactions",
                "1000",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert pl.read_parquet(log).height == 1000
    out = tmp_path / "prepared"
    assert (
        main(
            [
                "prepare",
                "--input",
                str(log),
                "--format",
                "parquet",
                "--output",
                str(out),
                "--k-core",
                "2",
                "--repeats",
                "drop-all",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{") :])
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["num_interactions"] == manifest["num_interactions"]
    assert summary["repeats"] == manifest["repeats"] and summary["ties"] == manifest["ties"]
    assert manifest["config"]["k_core"] == 2 and manifest["config"]["repeats"] == "drop-all"
    assert manifest["dataset"]["name"] == "log"


def test_prepare_config_file_and_flag_override(tmp_path, write):
    src = write("log.tsv", "u\ti\tt\n" + "".join(f"a\tx{j}\t{j}\n" for j in range(5)))
    cfg = write(
        "prep.json",
        json.dumps(
            {
                "input": str(src),
                "output": str(tmp_path / "o"),
                "format": "csv",
                "user_col": "u",
                "item_col": "i",
                "time_col": "t",
                "min_seq_len": 4,
            }
        ),
    )
    assert main(["prepare", "--config", str(cfg), "--min-seq-len", "5"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["config"]["min_seq_len"] == 5
    assert manifest["num_interactions"] == 5


def test_bad_input_exits_2_with_message(tmp_path, write, capsys):
    src = write("bad.csv", "user_id,item_id,timestamp\n1,2,soon\n")
    assert (
        main(["prepare", "--input", str(src), "--format", "csv", "--output", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.csv', line 2, column 'timestamp': cannot parse 'soon'" in err
    assert not (tmp_path / "o").exists()


def test_unknown_config_key_exits_2(write, capsys):
    cfg = write("c.json", json.dumps({"input": "a", "output": "b", "shuffle": True}))
    assert main(["prepare", "--config", str(cfg)]) == 2
    assert "unknown option(s) ['shuffle']" in capsys.readouterr().err
