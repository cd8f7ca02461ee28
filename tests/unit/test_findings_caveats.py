"""The findings' caveats say when a count of significant alignment tests is the resolution of the test."""

from types import SimpleNamespace

from emolens.report.findings import caveats


def test_p_floor_caveat_only_where_bh_could_not_resolve_the_family():
    res = SimpleNamespace(sweeps={}, readout={}, equivalence={}, alignment_summary={"families": {
        # the real pair at n_perm 20: p >= 1/21, and BH at 0.05 over 54 tests needs 52 of them at that floor
        "emotion_specific": {"n_significant": 0, "n_tests": 54, "p_floor": 1 / 21, "min_tests_at_floor": 52},
        # n_perm 100: 69 significant where 15 at the floor were needed, so the count is resolved
        "texts_alike": {"n_significant": 69, "n_tests": 72, "p_floor": 1 / 101, "min_tests_at_floor": 15},
    }})
    notes = "\n".join(caveats(res, organisms=[]))
    assert "emotion_specific: 0 of 54 significant" in notes and "at least 52 sit at that floor" in notes
    assert "texts_alike" not in notes


def test_each_quantised_model_gets_its_noise_beside_its_effects():
    from emolens.report.findings import quantisation_notes

    res = SimpleNamespace(equivalence={
        "a": {"quantization": "llm.int8", "batch_noise": {"batch": 0.88, "split": 1.29}},
        "b": {"quantization": "int8", "batch_noise": {"batch": 9.5e-6, "split": 1.1e-5}},
        "c": {"quantization": None, "batch_noise": {"batch": 1e-5, "split": 1e-5}},
        "old": {"max_difference": {}}})  # an equivalence file of schema /1: no quantisation recorded
    a, b = quantisation_notes(res)
    assert a.startswith("a ran in llm.int8") and "int8 batch noise up to 1.3 logits" in a and "not resolved" in a
    assert b.startswith("b ran in weight-only int8") and "move 1e-05 with its batch" in b
