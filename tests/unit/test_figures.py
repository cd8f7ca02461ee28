"""Figures: every figure the workflow declares has its own caption, and demo organisms are labelled as such."""

from pathlib import Path

from emolens.report.figures import CROSS_MODEL_FIGURES, FIGURES, _tick, model_labels

ROOT = Path(__file__).resolve().parents[2]


def test_every_figure_has_its_caption_and_is_declared_by_the_workflow():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    for name in [*FIGURES, *CROSS_MODEL_FIGURES]:
        assert (ROOT / "workflow/report" / f"{name}.rst").read_text().strip(), name
        assert f'"{name}"' in common, f"{name} is not among the figures rule's outputs"
    assert not (ROOT / "workflow/report/figures.rst").exists(), "one caption per figure, not one for all"


def test_organisms_are_labelled_with_width_and_depth():
    labels = model_labels(["llama3_8b", "gpt2_small"], {"llama3_8b": {"d_model": 128, "n_layers": 4}})
    assert labels == {"llama3_8b": "llama3_8b: demo organism (d_model 128, 4 layers)", "gpt2_small": "gpt2_small"}
    assert _tick(labels, "llama3_8b") == "llama3_8b\n(organism, d 128, 4 layers)"
    assert _tick(labels, "gpt2_small") == "gpt2_small"
