"""The findings' cross-model section places each pair between its floor and ceiling and against the words."""

from types import SimpleNamespace

from emolens.report.alignment_findings import ceiling_section, reference_section, words_section

MEASURES = ("linear_cka", "linear_cka_item_centred", "transfer_cosine_mean", "subspace_mean_cos", "rsa", "rdm_rho")


def _pair(models, kind, layers, value, null=0.1, n_layers=(2, 2), controls=None):
    cell = {"value": [value] * len(layers), "null_mean": [null] * len(layers), "mean": value,
            "n_significant": len(layers), "n_tests": len(layers)}
    return {"models": list(models), "kind": kind, "matched_layers": [list(x) for x in layers],
            "n_layers": list(n_layers), "measures": {m: dict(cell) for m in MEASURES}, "controls": controls or {}}


def _results():
    pair = _pair(("a", "b"), "models", [(0, 0), (1, 2), (2, 4)], 0.6, n_layers=(2, 4),
                 controls={"words_partialled": _pair(("a", "b"), "models", [(0, 0)], 0.3)["measures"]})
    words = [_pair((m, "words"), "words", [(i, 0) for i in range(n + 1)], 0.4) for m, n in (("a", 2), ("b", 4))]
    twin = _pair(("a", "a_twin"), "ceiling", [(0, 0), (1, 1), (2, 2)], 0.85)
    k = {"pairs": [{"models": ["a", "b"], "k": 2, "controls": {"words_partialled": {"k": 1}}}],
         "ceilings": [{"models": ["a", "a_twin"], "k": 3}]}
    return SimpleNamespace(alignment_summary={"pairs": [pair, *words, twin]}, statistics={"k": k})


def test_each_measure_sits_between_its_floor_and_the_twin():
    text = "\n".join(ceiling_section(_results()))
    # value 0.6, floor 0.1, ceiling 0.85: (0.6 - 0.1) / (0.85 - 0.1) = 0.67; k 2 of the twin's 3
    assert "| a / b | a / a_twin | CKA (texts) | 0.60 | 0.10 | 0.85 | 0.67 |" in text
    assert "| a / b | a / a_twin | k | 2 | 0 | 3 | 0.67 |" in text
    assert "b /" not in text.split("| measure |")[1].split("a / a_twin")[0]  # b has no twin: no row of its own


def test_a_pair_is_compared_with_both_models_against_the_words():
    text = "\n".join(reference_section(_results().alignment_summary))
    assert "| a | 0.40 (3/3)" in text and "| b | 0.40 (5/5)" in text
    assert "a / b: CKA (item-centred) at 3 of 3 depths" in text  # 0.6 above both models' 0.4


def test_words_section_reports_each_section_and_its_k():
    text = "\n".join(words_section(_results()))
    assert "| a / b | all | 0.60 (3/3)" in text and text.count("| a / b | words_partialled | 0.30 (1/1)") == 1
    assert text.split("| a / b | words_partialled |")[1].split("\n")[0].rstrip().endswith("| 1 |")
    assert "a / b: CKA (texts) 1/1" in text
