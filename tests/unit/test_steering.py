"""Steering, ablation and transfer (emolens.phases.steering, .ablation, .transfer), on tiny models and organisms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emolens import EMOTIONS
from emolens.data.dataset import build_dataset
from emolens.data.readout import DEFAULT, READOUT_SUFFIX
from emolens.engine.edits import Prompts, clean_run, prepare_prompts, run_edits
from emolens.engine.patching import collect
from emolens.engine.steered import dose_steps, measure, shifts_at, steer_index, steering_shifts
from emolens.io import save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.model.organisms import build_organism
from emolens.phases.ablation import ablation_index, emotion_basis, fit_probes, random_basis
from emolens.phases.activations import extract
from emolens.phases.steering import run_steering
from emolens.phases.transfer import run_transfer, run_transfer_summary, transfer_effect
from emolens.report.checks import check_steering
from emolens.stats.steering_stats import item_bootstrap, item_matrix, random_directions, readout_measures, unit

RECORDS = build_dataset()[:64]  # 16 items x 4 emotions


def _prompts(adapter: ModelAdapter, records=RECORDS, kl_prompts: int = 4) -> Prompts:
    return prepare_prompts(adapter, records, DEFAULT, kl_prompts)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3"])
def test_alpha_zero_is_the_clean_run_exactly(tiny_adapters, family):
    adapter = tiny_adapters[family]
    prompts = _prompts(adapter)
    reference, _ = collect(adapter, prompts.tokens, prompts.token_ids, offsets=(), batch_size=8)  # no hooks
    zero = run_edits(adapter, prompts, 1, add=np.zeros((1, adapter.d_model)), batch_size=8)
    assert np.array_equal(zero.labels[0], reference.double().numpy())  # bit-identical, not close
    clean = clean_run(adapter, prompts, batch_size=8)
    direction = random_directions(1, adapter.d_model, np.random.default_rng(0))
    steered = steer_index(adapter, prompts, clean, 1, 10.0 * direction, [0.0, 1.0], 8)
    assert np.array_equal(steered.labels[0], clean.labels[0]) and np.all(steered.kl[0][prompts.kl_row >= 0] == 0)
    assert not np.allclose(steered.labels[1], clean.labels[0])  # alpha 1 does move it
    assert np.all(steered.kl[1][prompts.kl_row >= 0] > 0) and np.isnan(steered.kl[1][prompts.kl_row < 0]).all()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3"])
def test_a_prompt_shared_by_its_conditions_equals_running_them_apart(tiny_adapters, family):
    """The fast path runs each prompt once below the edited index and expands it to the conditions there."""
    adapter = tiny_adapters[family]
    prompts = _prompts(adapter, RECORDS[:8])
    rng = np.random.default_rng(0)
    add = 3.0 * random_directions(5, adapter.d_model, rng)
    basis = np.stack([random_basis(2, adapter.d_model, rng) for _ in range(5)])
    clean = clean_run(adapter, prompts)
    layers = list(range(adapter.n_layers + 1))
    for layer in (0, adapter.n_layers - 1, adapter.n_layers):
        fast, slow = (run_edits(adapter, prompts, layer, add=add, basis=basis, capture=layers, clean=clean,
                                batch_size=4, share=share) for share in (True, False))
        np.testing.assert_allclose(fast.labels, slow.labels, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast.kl, slow.kl, rtol=1e-4, atol=1e-6)
        for m in layers:
            np.testing.assert_allclose(fast.acts[m], slow.acts[m], rtol=1e-5, atol=1e-5)


def _planted(tokenizer, u: np.ndarray, gain: float = 4.0) -> ModelAdapter:
    """A two-layer Llama whose gratitude label logit reads direction u of the final-normed stream (the
    other labels read nothing): steering along u must raise the gratitude readout."""
    model = build_organism("llama", d_model=64, n_layers=2, n_heads=4, vocab_size=len(tokenizer), seed=11)
    ids = DEFAULT.label_token_ids(tokenizer)
    with torch.no_grad():
        for e in EMOTIONS:
            model.lm_head.weight[ids[e]] = 0.0
        model.lm_head.weight[ids["gratitude"]] = gain * torch.as_tensor(u, dtype=torch.float32)
    return ModelAdapter(model, tokenizer, name="planted")


def test_planted_direction_moves_the_readout_monotonically_and_random_ones_do_not(tokenizer):
    d = 64
    u = unit(np.random.default_rng(0).standard_normal(d))
    adapter = _planted(tokenizer, u)
    prompts = _prompts(adapter, RECORDS[:32], kl_prompts=0)
    clean = clean_run(adapter, prompts, batch_size=32)
    offsets = clean.labels[0].mean(0)
    averaging, _ = item_matrix(prompts.items)
    alphas = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    dirs = np.concatenate([u[None], random_directions(8, d, np.random.default_rng(1))])
    for layer in range(adapter.n_layers + 1):
        run = steer_index(adapter, prompts, clean, layer, 8.0 * dirs, alphas, batch_size=64)
        ld = steering_shifts(run, clean, prompts, offsets, averaging, len(alphas))["ld"]  # [A, D, I, 4]
        grat = ld[:, :, :, 0].mean(-1)  # [A, D]: gratitude readout shift, item mean
        planted, random = grat[:, 0], grat[:, 1:]
        assert np.all(np.diff(planted) > 0), (layer, planted)  # dose-response: strictly rising in alpha
        assert planted[-1] > 3 * np.abs(random[-1]).max(), (layer, planted[-1], random[-1])
        assert planted[-1] > 1.0


def test_readout_measures_are_offset_invariant_shifts():
    z = np.random.default_rng(0).standard_normal((5, 4))
    prob, ld = readout_measures(z, np.zeros(4))
    assert np.allclose(prob.sum(-1), 1) and np.allclose(ld.sum(-1), 0)  # LDs against the others sum to zero
    _, ld_shifted = readout_measures(z + 3.0, np.zeros(4))
    assert np.allclose(ld, ld_shifted)


def _identity_blocks_llama(tokenizer, n_layers: int = 3) -> ModelAdapter:
    """A Llama whose blocks write nothing (o_proj and down_proj zero): the residual stream at every index is
    the token embedding, so what the stream encodes is exactly what the embeddings plant."""
    model = build_organism("llama", d_model=64, n_layers=n_layers, n_heads=4, vocab_size=len(tokenizer), seed=5)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return ModelAdapter(model, tokenizer, name="identity-blocks")


def test_ablating_the_emotion_span_drives_later_probes_to_chance(tokenizer):
    """Emotion is encoded only along three planted directions (the last token's embedding = its class mean
    + token noise, the fit tokens' noise summing to zero per class); held-out prompts use other tokens."""
    adapter = _identity_blocks_llama(tokenizer)
    d, rng = adapter.d_model, np.random.default_rng(0)
    means = 4.0 * (np.eye(4) - 0.25) @ random_basis(4, d, rng)  # a regular simplex: 3 dimensions
    n_fit, n_held = 40, 20
    first = 10
    emb = adapter.model.get_input_embeddings().weight
    with torch.no_grad():
        for e in range(4):
            half = rng.standard_normal((n_fit // 2, d)) * 0.5
            noise = np.concatenate([half, -half, rng.standard_normal((n_held, d)) * 0.5])  # fit noise sums to 0
            tokens = first + e * (n_fit + n_held) + np.arange(n_fit + n_held)
            emb[tokens] = torch.as_tensor(means[e] + noise, dtype=torch.float32)

    def prompts(start: int, count: int) -> Prompts:
        toks, truth, items = [], [], []
        for j in range(count):
            for e in range(4):
                toks.append([3, 4, 5 + j % 3, first + e * (n_fit + n_held) + start + j])
                truth.append(e)
                items.append(f"i{j}")
        return Prompts(toks, np.array(truth), np.array(items), np.full(len(toks), -1), [500, 501, 502, 503])

    fit, held = prompts(0, n_fit), prompts(n_fit, n_held)
    layers = list(range(adapter.n_layers + 1))
    x_fit = np.stack([clean_run(adapter, fit, capture=layers).acts[m][0] for m in layers], axis=1)  # [N, S, d]
    fit_emotions = [EMOTIONS[t] for t in fit.truth]
    probes = fit_probes(x_fit.astype(np.float64), fit_emotions, layers, seed=0)
    clean = clean_run(adapter, held, capture=layers)
    labels = np.asarray(EMOTIONS)[held.truth]
    assert all((probes[m].predict(clean.acts[m][0]) == labels).mean() > 0.95 for m in layers)
    averaging, names = item_matrix(held.items)
    boot = item_bootstrap([{"item_id": n} for n in names], names, 50, rng)  # each item its own frame
    layer = 1
    basis = emotion_basis(x_fit[:, layer], fit_emotions)
    assert basis.shape == (3, d)
    bases = np.stack([basis] + [random_basis(3, d, rng) for _ in range(3)])
    out = ablation_index(adapter, held, clean, layer, bases, probes, boot, averaging, clean.labels[0].mean(0))
    assert sorted(out["probe_accuracy"]) == [1, 2, 3]  # only indices at or after the ablated one
    for m in (1, 2, 3):
        assert out["probe_accuracy"][m] < 0.45, out  # chance is 0.25
        assert out["probe_accuracy_random_mean"][m] > 0.85, out  # a random 3-d subspace barely matters


def _readout_directions(adapter: ModelAdapter) -> np.ndarray:
    """[4, d]: each label's unembedding row minus the mean of the other three (moves that label up)."""
    ids = DEFAULT.label_token_ids(adapter.tokenizer)
    w = adapter.model.get_output_embeddings().weight[[ids[e] for e in EMOTIONS]].detach().double().numpy()
    return w - (w.sum(0) - w) / 3


def test_transfer_through_the_identity_map_equals_own_steering(tiny_adapters):
    adapter = tiny_adapters["llama"]
    held = measure(adapter, RECORDS, DEFAULT, 0, batch_size=16)
    boot = item_bootstrap([{"item_id": n} for n in held.items], held.items, 100, np.random.default_rng(0))
    layer, alpha = adapter.n_layers, 2.0
    xb_fit = 3.0 * np.random.default_rng(2).standard_normal((40, adapter.d_model))  # the dose unit's sd
    own = _readout_directions(adapter)
    random = random_directions(5, adapter.d_model, np.random.default_rng(1))
    permuted = np.concatenate([own[[1, 0, 3, 2]], own[[2, 3, 0, 1]], own[[3, 2, 1, 0]]])  # three relabellings
    effect = transfer_effect(adapter, held, xb_fit, layer, alpha, own, {"self": (own.copy(), random, permuted)},
                             boot, batch_size=16)
    src = effect["sources"]["self"]
    assert np.all(effect["own"]["on_target"] > 0)
    np.testing.assert_allclose(src["on_target_mapped"], effect["own"]["on_target"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(src["fraction"], 1.0, rtol=1e-6)
    assert src["fraction_mean"] == pytest.approx(1.0, rel=1e-6) and src["beats_null"]
    assert src["null_p_permuted"] == pytest.approx(0.25)  # every relabelling scores below the right labels
    # and it is the steering phase's own measurement of the same vectors, run on its own
    ld = shifts_at(adapter, held, layer, dose_steps(xb_fit, own), [0.0, alpha], batch_size=16)["ld"][1]
    np.testing.assert_allclose(np.einsum("eie->e", ld) / ld.shape[1], src["on_target_mapped"], rtol=1e-5, atol=1e-6)


TEMPLATES = ("\nThis message expresses", READOUT_SUFFIX)  # the run's own suffix last: it must change nothing


@pytest.fixture(scope="module")
def steering_run(tiny_adapters, tmp_path_factory):
    """run_steering on two tiny models of different widths, then run_transfer both ways and the summary,
    laid out as a profile's results directory."""
    root = tmp_path_factory.mktemp("results")
    records = build_dataset()[:160]
    for family in ("llama", "qwen3"):
        adapter = tiny_adapters[family]
        act = {"schema": "emolens.activations/2", "resid": extract(adapter, [r["text"] for r in records], 64),
               "ids": [r["id"] for r in records], "emotions": [r["emotion"] for r in records],
               "item_ids": [r["item_id"] for r in records], "n_layers": adapter.n_layers,
               "d_model": adapter.d_model, "quantization": None, "provenance": {}}
        save_pickle(act, root / "activations" / f"{family}.pkl")
    kwargs = {"n_null": 8, "max_prompts": 24, "n_boot": 50, "seed": 0, "batch_size": 64}
    st, acts = root / "steering", [root / "activations" / f"{f}.pkl" for f in ("llama", "qwen3")]
    for family in ("llama", "qwen3"):
        run_steering(tiny_adapters[family], records, root / "activations" / f"{family}.pkl", st / f"{family}.json",
                     alphas=[0, 1, 4], n_random=3, kl_prompts=3, n_random_subspaces=2, max_depth=0.5,
                     templates=TEMPLATES if family == "llama" else (), **kwargs)
    for family in ("llama", "qwen3"):
        run_transfer(tiny_adapters[family], records, acts, st / f"{family}.json",
                     st / "transfer" / f"into_{family}.json", **kwargs)
    run_transfer_summary([st / "transfer" / f"into_{f}.json" for f in ("llama", "qwen3")],
                         st / "transfer" / "summary.json")
    return root


def test_run_steering_writes_what_verification_accepts(steering_run):
    st = steering_run / "steering"
    for family in ("llama", "qwen3"):
        ok, detail = check_steering(st / f"{family}.json", st / "transfer" / f"into_{family}.json")
        assert ok, detail
        result = json.loads((st / f"{family}.json").read_text())
        n_layers = len(result["layers"])
        assert np.asarray(result["readout_shift"]["ld"]["specificity"]).shape == (n_layers, 3, 4, 4)
        assert result["split"]["n_prompts"] <= 24 and result["split"]["n_kl_prompts"] == 3
        assert result["best"]["layer"] in result["layers"]
        assert not set(result["split"]["heldout_items"]) & fit_items(result)
        by = result["best"]["by_register"]  # each register's held-out items alone, from the same shifts
        assert set(by) <= {"explicit", "implicit"} and by
        assert all(np.shape(t["on_target_ld"]) == (4,) and np.shape(t["on_target_p_permuted"]) == (4,)
                   for t in by.values())
    summary = json.loads((st / "transfer" / "summary.json").read_text())
    assert summary["models"] == ["llama", "qwen3"]
    assert summary["fraction_mean"][0][0] is None and summary["layer_a"][1][0] is not None


def test_template_shift_under_the_runs_own_suffix_is_the_chosen_point_and_the_inner_choice_is_shallow(steering_run):
    result = json.loads((steering_run / "steering" / "llama.json").read_text())
    best, (other, same) = result["best"], result["template_shift"]
    assert same["same_as_run"] and not other["same_as_run"] and same["suffix"] == READOUT_SUFFIX
    for key in ("on_target_ld", "specificity_row", "specificity_column", "on_target_p_permuted",
                "specificity_row_p", "specificity_column_p", "null_permuted_q95", "on_target_ld_ci_low"):
        np.testing.assert_allclose(same[key], best[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert "on_target_p_gaussian" not in same and "on_target_p_gaussian" in best
    assert same["accuracy_calibrated"] == pytest.approx(result["clean"]["accuracy_calibrated"])
    assert np.shape(other["specificity_row_p"]) == (4,) and 0 <= other["accuracy_raw"] <= 1
    inner = result["best_within_depth"]
    assert inner["layer"] in result["layers"] and inner["layer"] <= 0.5 * result["n_layers"]
    assert np.shape(inner["on_target_p_permuted"]) == (4,) and inner["max_depth"] == 0.5
    assert inner["same_as_best"] == ((inner["layer"], inner["alpha"]) == (best["layer"], best["alpha"]))
    assert json.loads((steering_run / "steering" / "qwen3.json").read_text())["template_shift"] == []


def fit_items(result) -> set[str]:
    """The fit half's items, recomputed as the steering run split them."""
    from emolens.stats.resampling import frame_split

    return {r["item_id"] for r in frame_split(build_dataset()[:160], 0)[0]}


def test_verification_catches_a_nonzero_alpha_zero_shift(steering_run, tmp_path):
    result = json.loads((steering_run / "steering" / "llama.json").read_text())
    result["readout_shift"]["ld"]["specificity"][0][0][1][2] = 1e-3
    (tmp_path / "bad.json").write_text(json.dumps(result))
    ok, detail = check_steering(tmp_path / "bad.json", None)
    assert not ok and "alpha 0" in detail


def test_figures_draw_steering(steering_run, tmp_path):
    from emolens.report.figures import steering

    steering(steering_run, ["llama", "qwen3"], tmp_path)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {"steering_dose_response.png", "steering_specificity.png", "steering_ablation.png",
                     "steering_transfer.png"}


def test_steering_equals_an_independent_forward_hook(tiny_adapters):
    """Reference: adding the same vector to the output of block l - 1 with a plain PyTorch forward hook on the
    Hugging Face module (no emolens hook code) gives the same label logits as steering at index l."""
    adapter = tiny_adapters["llama"]
    prompts = _prompts(adapter, RECORDS[:8], kl_prompts=0)
    clean = clean_run(adapter, prompts, batch_size=8)
    step = 3.0 * random_directions(1, adapter.d_model, np.random.default_rng(5))  # [1, d]
    steered = steer_index(adapter, prompts, clean, 2, step, [0.0, 2.0], batch_size=8).labels[1]  # [P, 4]
    add = torch.as_tensor(2.0 * step[0], dtype=torch.float32)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + add, *output[1:])
        return output + add

    handle = adapter.model.model.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = np.stack([adapter.model(torch.tensor([t])).logits[0, -1, prompts.token_ids].double().numpy()
                             for t in prompts.tokens])
    finally:
        handle.remove()
    assert np.abs(want - clean.labels[0]).max() > 1e-2  # the vector does move the logits
    np.testing.assert_allclose(steered, want, rtol=1e-4, atol=1e-4)


def test_the_robustness_check_accepts_the_run_and_catches_a_deep_inner_choice_and_a_moved_template(steering_run,
                                                                                                    tmp_path):
    from emolens.report.results import Results
    from emolens.report.robustness import check_robustness, robustness_section

    vec = tmp_path / "v.pkl"
    save_pickle({"schema": "emolens.vectors/1", "masked": None, "probe_accuracy": np.zeros(3), "provenance": {}}, vec)
    path = steering_run / "steering" / "llama.json"
    ok, detail = check_robustness(vec, path)
    assert ok, detail
    result = json.loads(path.read_text())
    deep = json.loads(path.read_text())
    deep["best_within_depth"]["layer"] = result["n_layers"]
    (tmp_path / "deep.json").write_text(json.dumps(deep))
    assert not check_robustness(vec, tmp_path / "deep.json")[0]
    moved = json.loads(path.read_text())
    moved["template_shift"][1]["on_target_ld"][0] += 0.5
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    ok, detail = check_robustness(vec, tmp_path / "moved.json")
    assert not ok and "run's suffix" in detail
    page = "\n".join(robustness_section(Results(tmp_path, steering={"llama": result})))
    assert "Another readout template" in page and "inside the network" in page
