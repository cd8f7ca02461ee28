"""The stopwatch charges each second to the innermost open mark, and a job's log carries its split."""

import time

import pytest

from emolens import stopwatch
from emolens.cli import main


def test_inner_marks_are_charged_exclusively():
    stopwatch.start()
    with stopwatch.charged("statistics"):
        time.sleep(0.05)
        with stopwatch.charged("forward"):
            time.sleep(0.1)
    spent = stopwatch.report()
    assert 0.1 <= spent["forward"] < 0.15
    assert 0.05 <= spent["statistics"] < 0.1  # its inner forward is not counted twice
    assert spent["total"] == pytest.approx(sum(spent[k] for k in stopwatch.KINDS), abs=0.01)


def test_decorator_charges_every_call():
    @stopwatch.charged("tokenise")
    def work() -> int:
        time.sleep(0.02)
        return 1

    stopwatch.start()
    assert work() + work() == 2
    assert stopwatch.report()["tokenise"] >= 0.04


def test_startup_is_the_process_age():
    age = stopwatch.process_age()
    assert age is not None and age > 0  # this pytest process started before the test
    stopwatch.start()
    assert stopwatch.report()["startup"] >= age - 0.01  # /proc/uptime counts in hundredths


def test_unknown_kind_refused():
    with pytest.raises(AssertionError), stopwatch.charged("lunch"):
        pass


def test_command_logs_its_profile(tmp_path, capsys):
    out = tmp_path / "data.jsonl"
    assert main(["dataset", "--out", str(out)]) == 0
    split = stopwatch.parse(capsys.readouterr().err)
    assert split is not None and set(split) == {*stopwatch.KINDS, "total"}
    assert split["total"] >= split["startup"] > 0
