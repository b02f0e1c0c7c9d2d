"""``minidiff bench layers`` at a tiny batch: it runs and its JSON has the documented rows."""
import json

import pytest

from minidiff.bench import layers as bench_layers
from minidiff.commands import bench as bench_command


def test_bench_layers_json_rows(capsys):
    assert bench_command.layers_main(["--batch", "2", "--repeat", "1", "--threads", "1",
                              "--no-torch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["torch"] is None
    assert [row["name"] for row in result["rows"]] == [case[0] for case in bench_layers.CASES]
    assert all(row["minidiff_ms"] > 0 and "ratio" not in row for row in result["rows"])
    assert result["total"]["minidiff_ms"] == sum(
        row["weight"] * row["minidiff_ms"] for row in result["rows"])


def test_bench_layers_rejects_zero_repeats(capsys):
    with pytest.raises(SystemExit) as stop:     # argparse's exit, with one line on stderr
        bench_command.layers_main(["--repeat", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--repeat" in err and len(err.strip().splitlines()) == 1
