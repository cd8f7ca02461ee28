"""The findings' caveats say when a count of significant alignment tests is the resolution of the test."""

from types import SimpleNamespace

from emolens.findings import caveats


def test_p_floor_caveat_only_where_bh_could_not_resolve_the_family():
    res = SimpleNamespace(sweeps={}, readout={}, alignment_summary={"families": {
        # the real pair at n_perm 20: p >= 1/21, and BH at 0.05 over 54 tests needs 52 of them at that floor
        "emotion_specific": {"n_significant": 0, "n_tests": 54, "p_floor": 1 / 21, "min_tests_at_floor": 52},
        # n_perm 100: 69 significant where 15 at the floor were needed, so the count is resolved
        "texts_alike": {"n_significant": 69, "n_tests": 72, "p_floor": 1 / 101, "min_tests_at_floor": 15},
    }})
    notes = "\n".join(caveats(res, organisms=[]))
    assert "emotion_specific: 0 of 54 significant" in notes and "at least 52 sit at that floor" in notes
    assert "texts_alike" not in notes
