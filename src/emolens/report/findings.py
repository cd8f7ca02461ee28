"""The findings page: what a profile's run found, in words and small tables, generated from its result files.

Every number on the page is read from the files the phases wrote (through :func:`emolens.report.results.load`);
nothing is typed by hand. Per model: does it read the emotion (readout baseline); where the emotion
becomes linearly decodable beyond a bag of words (probe vs lexical baseline, cross-register transfer);
where patching the residual stream at the last position crosses half the clean separation, and what
the message positions carry; the heads confirmed on held-out frames; steering and ablation. Across
models: alignment by question and the aligned dimension k, and steering transfer. Then the caveats.
Output: ``results/<p>/findings.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.io import atomic_path
from emolens.report import attention_mlp
from emolens.report.alignment_findings import alignment_section
from emolens.report.markdown import number as _f
from emolens.report.markdown import table as _table
from emolens.report.results import Results, load
from emolens.report.robustness import robustness_section
from emolens.stats.power import design_resolution

log = logging.getLogger(__name__)
WEAK_READOUT = 1 / 3  # calibrated accuracy below this share of the way from chance to 1: the model barely reads the
# emotion (0.5 for four emotions)


def emotions_of(res: Results) -> tuple[str, ...]:
    """The run's emotions, as its result files record them (the readout files, vectors, steering, dataset card)."""
    files = [*res.readout.values(), *res.vectors.values(), *res.steering.values(), res.dataset_card]
    return emotion_order(next((f["emotions"] for f in files if f.get("emotions")), ()))


def _chance(res: Results) -> str:
    """Chance accuracy, 1 / n_emotions, for the page."""
    return _f(1 / len(emotions_of(res))) if emotions_of(res) else "n/a"


def readout_section(res: Results) -> list[str]:
    rows, chat = [], any(r.get("chat") for r in res.readout.values())
    n = len(emotions_of(res)) or "n"
    for m, r in res.readout.items():
        reg, share = r.get("by_register") or {}, r["predicted_share"]
        top = max(share, key=share.get)
        c = r.get("chat")
        in_chat = f"{_f(c['accuracy'])} / {_f(c['accuracy_calibrated'])}" if c else "-"
        rows.append([m, _f(r["accuracy"]), _f(r["accuracy_calibrated"]),
                     *(_f(reg.get(g, {}).get("accuracy_calibrated")) for g in ("explicit", "implicit")),
                     f"{top} ({_f(share[top])})", *([in_chat] if chat else [])])
    note = (" Chat template: the same prompt as an instruct model's conversation (the message as the user's turn, "
            "the suffix opening the assistant's answer), raw / calibrated; every other section uses the plain "
            "prompt." if chat else "")
    return ["## Does each model read the emotion?", "",
            f"The model's own {n}-way prediction from its label logits after the readout prompt "
            f"(chance {_chance(res)}); "
            "calibrated = each label's mean logit over the dataset subtracted first." + note, "",
            *_table(["model", "accuracy", "calibrated", "calibrated, explicit", "calibrated, implicit",
                     "most predicted label (share)", *(["chat template"] if chat else [])], rows), ""]


def probe_section(res: Results) -> list[str]:
    lines = ["## Where does the emotion become decodable?", "",
             "Linear probes with whole sentence frames held out, beside a bag-of-words baseline on the same folds "
             "and the transfer from explicit to implicit texts.", ""]
    rows, alpha = [], res.statistics.get("effect", {}).get("alpha", 0.05)  # the profile's alpha
    for m, v in res.vectors.items():
        acc = np.asarray(v["probe_accuracy"], float)
        depth = np.linspace(0, 1, len(acc))
        lexical = v.get("lexical_accuracy")
        versus = v.get("probe_vs_lexical") or {}
        transfer = v.get("transfer_explicit_to_implicit")
        t_best = int(np.argmax(transfer)) if transfer is not None else None
        implicit = (v.get("probe_accuracy_by_register") or {}).get("implicit")
        lex_reg = v.get("lexical_accuracy_by_register") or {}
        test = v.get("decoding_test") or {}
        above_chance = np.flatnonzero(np.asarray(test.get("p_fwer", []), float) <= alpha)
        rows.append([m, f"{_f(acc.max())} at depth {_f(depth[acc.argmax()])}", _f(lexical),
                     f"depth {_f(depth[above_chance[0]])}" if len(above_chance) else "nowhere",
                     _beats_lexical(versus, depth),
                     f"{_f(max(implicit))} vs {_f(lex_reg.get('implicit'))}" if implicit is not None else "n/a",
                     f"{_f(transfer[t_best])} at depth {_f(depth[t_best])}" if t_best is not None else "n/a"])
    return lines + _table(["model", "best probe (max over layers, descriptive)", "lexical baseline",
                           "first above chance (ridge probe, label permutation, FWER over layers)",
                           "probe above lexical (simultaneous 95% band, frame bootstrap)",
                           "implicit: best probe vs lexical (descriptive)",
                           "explicit -> implicit transfer (best layer, descriptive)"], rows) + [""]


def _beats_lexical(versus: dict[str, Any], depth: np.ndarray) -> str:
    """'from depth x: +d [lo, hi]' where the band of probe minus lexical first clears 0; else the best layer's."""
    if not versus:
        return "n/a"
    diff, low, high = (np.asarray(versus[k], float) for k in ("difference", "band_low", "band_high"))
    at = versus["first_above"] if versus["first_above"] is not None else int(np.argmax(diff))
    cell = f"{diff[at]:+.2f} [{low[at]:+.2f}, {high[at]:+.2f}]"
    return f"from depth {_f(depth[at])}: {cell}" if versus["first_above"] is not None else f"nowhere (best {cell})"


def length_section(res: Results) -> list[str]:
    """What the texts give away (the dataset card) and what the probes decode once length is erased."""
    card = res.dataset_card
    lines = ["## What do the texts give away? (dataset card, length control)", ""]
    if card:
        def accuracies(kind: str) -> str:
            return ", ".join(f"{g} {_f(a)}" for g, a in card[f"{kind}_accuracy"].items())
        lines += [f"- surface features alone (length, pronouns, punctuation, negation, time words; frames held out): "
                  f"{accuracies('surface')}; the lexical baseline: {accuracies('lexical')}; "
                  f"chance {_chance(res)}.",
                  f"- items whose texts lie within one word: {_f(card['words']['items_within_one'])}; "
                  f"implicit texts with an emotion stem or formula: {card['implicit_with_cues']}.", ""]
    rows, alpha = [], res.statistics.get("effect", {}).get("alpha", 0.05)
    for m, v in res.vectors.items():
        length = v.get("length")
        if not length:
            continue
        acc, erased = np.asarray(v["probe_accuracy"], float), np.asarray(length["erased_probe_accuracy"], float)
        depth = np.linspace(0, 1, len(acc))
        survives = np.flatnonzero(np.asarray(length["erased_decoding_test"]["p_fwer"], float) <= alpha)
        surface = length["surface_accuracy"]["all"]
        both = np.flatnonzero(np.asarray((v.get("probe_vs_lexical") or {}).get("above", False)) & (acc > surface))
        rows.append([m, _f(length["token_match"]["equal_pairs"]), _f(surface),
                     _f(v["lexical_accuracy"]), f"{_f(acc.max())} at depth {_f(depth[acc.argmax()])}",
                     f"{_f(erased.max())} at depth {_f(depth[erased.argmax()])}",
                     f"{len(survives)} of {len(acc)}, from depth {_f(depth[survives[0]])}" if len(survives) else "none",
                     f"depth {_f(depth[both[0]])}" if len(both) else "nowhere"])
    if rows:
        lines += _table(["model", "pairs of equal token length", "surface (with its tokens)", "lexical",
                         "best probe (descriptive)", "best probe, length erased (LEACE)",
                         "indices decodable after length erasure (FWER over layers)",
                         "first depth above both baselines"], rows)
    learned = [m for m, v in res.vectors.items() if v.get("learned_positions")]
    if learned:
        lines += ["", f"Index 0 of {', '.join(learned)} (learned absolute positions) holds the last token's embedding "
                      "plus its position: position/length only, not emotion."]
    return lines + [""]


def patching_section(res: Results) -> list[str]:
    lines = ["## Where is the emotion carried? (residual-stream patching)", "",
             "Effect = ratio of sums over kept pairs, sum(LD_patched - LD_run) / sum(LD_donor - LD_run) "
             "(0 = unpatched, 1 = the source prompt's clean separation), 95% CI of a two-stage bootstrap (frames, "
             "then items).", ""]
    rows = []
    for m, s in res.sweeps.items():
        summary, low, high = (np.asarray(s[k], float) for k in ("summary", "ci_low", "ci_high"))
        roles, n = list(s["position_roles"]), max(s["layers"])
        last = list(s["positions"]).index(-1)
        cross = np.flatnonzero(summary[:, last] >= 0.5)
        at = (f"index {cross[0]} (depth {_f(cross[0] / n)}): {_f(summary[cross[0], last])} "
              f"[{_f(low[cross[0], last])}, {_f(high[cross[0], last])}]") if len(cross) else "never"
        message = [i for i, r in enumerate(roles) if r.startswith("message")]
        best = max(((summary[li, pi], li, pi) for li in range(len(summary)) for pi in message),
                   default=(np.nan, 0, 0))
        rows.append([m, f"{s['n_pairs_included']}/{len(s['pairs'])} ({s.get('n_frames', '?')} frames, "
                        f"{s['n_items']} items)", at,
                     f"{_f(best[0])} at index {best[1]}, {roles[best[2]]}" if message else "n/a"])
    return lines + _table(["model", "pairs kept (frames, items)", "last position first >= 0.5",
                           "largest effect at a message position"], rows) + ["", *register_patching(res)]


def register_patching(res: Results) -> list[str]:
    """Each register's pairs alone: where the last-position effect first reaches 0.5, and the joint head patch."""
    rows = []
    for m, tables in (res.statistics.get("effect", {}).get("models") or {}).items():
        for register, t in (tables.get("by_register") or {}).items():
            last, joint = t.get("residual_last", {}), t.get("joint", {})
            effect = np.array([np.nan if v is None else v for v in last.get("effect", [])], float)
            cross = np.flatnonzero(effect >= 0.5)
            at = (f"index {cross[0]}: {_f(effect[cross[0]])} [{_f(last['ci_low'][cross[0]])}, "
                  f"{_f(last['ci_high'][cross[0]])}]") if len(cross) else "never"
            heads = (f"{_f(joint.get('effect'))} [{_f(joint.get('ci_low'))}, {_f(joint.get('ci_high'))}] "
                     f"(p {_f(joint.get('p_perm'), 3)})") if joint else "n/a"
            n = int(np.max(last.get("n_frames", [0]) or [0]))
            rows.append([m, register, n, at, heads])
    if not rows:
        return []
    return ["Per register (each register's kept pairs alone; descriptive, not in the BH family):", "",
            *_table(["model", "register", "frames", "last position first >= 0.5", "joint top-K heads [CI] (p)"],
                    rows), ""]


def heads_section(res: Results) -> list[str]:
    lines = ["## Which heads move it? (confirmed on held-out frames)", "",
             "Heads ranked on one half of the frames (6a), patched at every readout position on the other half (6b); "
             "significance after Benjamini-Hochberg over the model's family (statistics/effect.json).", ""]
    effect = res.statistics.get("effect", {}).get("models", {})
    rows = []
    for m, h in res.head_patching.items():
        sig = effect.get(m, {}).get("heads", {}).get("significant") or [None] * len(h["heads"])
        for (layer, head), e, ci, s in zip(h["heads"], h["summary_single"], h["ci_single"], sig, strict=True):
            rows.append([m, f"L{layer}H{head}", f"{_f(e)} [{_f(ci[0])}, {_f(ci[1])}]",
                         {True: "yes", False: "no", None: "n/a"}[s]])
        rows.append([m, "all top-K jointly", f"{_f(h['summary_joint'])} [{_f(h['ci_joint'][0])}, "
                     f"{_f(h['ci_joint'][1])}]", {True: "yes", False: "no"}.get(
                         effect.get(m, {}).get("joint", {}).get("significant"), "n/a")])
    agreement = [f"{m} {_f(s.get('spearman'))}" for m, s in res.head_scores.items()]
    lines += [f"{m}: blocks {s['layers_without_heads']} have no softmax attention (a hybrid's linear-attention, "
              "convolution or state-space blocks): residual sites only, no heads screened there."
              for m, s in res.head_scores.items() if s.get("layers_without_heads")]
    if not agreement:
        return lines + _table(["model", "head", "effect [95% CI]", "significant"], rows) + [""]
    return lines + _table(["model", "head", "effect [95% CI]", "significant"], rows) + [
        "", "Heads are ranked by their exact last-position effects. Attribution patching, the first-order "
        "estimate, ranks them with Spearman rho: " + "; ".join(agreement) + " (low where an effect is nonlinear "
        "in the patch, e.g. an early head read through later attention; reported, not used).", ""]


def steering_section(res: Results) -> list[str]:
    if not res.steering:
        return []
    lines = ["## Do the vectors cause anything? (steering and ablation on held-out frames)", "",
             "The index and dose are chosen on the fit half: the largest on-target shift whose off-label KL stays "
             "within the budget; doses are in standard deviations of the residual along each vector. On the held-out "
             f"half, per emotion ({', '.join(emotions_of(res))}): the on-target LD shift with its p against "
             "label-permuted vectors; specificity, row form (its own readout minus the largest other readout it "
             "moves) and column form (its readout under it minus the most any other emotion's vector moves that "
             "readout), with p against the permuted null; the share of items it moves the right way; and the drop in "
             "calibrated readout when the emotion subspace is projected out, against label-permuted emotion subspaces "
             "and random subspaces that remove as much variance.", ""]
    rows = []
    for m, s in res.steering.items():
        b, sel = s["best"], s["selection"]
        budget = "" if b["within_budget"] else " (none within budget)"
        rows.append([m, f"{b['layer']} ({_f(b['relative_depth'])})",
                     f"{_f(b['alpha'], 1)} sd, norm x{_f(float(np.mean(b['norm_ratio'])))}",
                     f"{_f(sel['fit_kl_nonlabel'], 3)} / {_f(sel['kl_budget'], 2)}{budget}",
                     " ".join(_f(v) for v in b["on_target_ld"]) + " (p " + " ".join(
                         _f(v, 3) for v in b["on_target_p_permuted"]) + ")",
                     " ".join(_f(v) for v in b["specificity_row"]) + " (p " + " ".join(
                         _f(v, 3) for v in b["specificity_row_p"]) + ")",
                     " ".join(_f(v) for v in b["specificity_column"]) + " (p " + " ".join(
                         _f(v, 3) for v in b["specificity_column_p"]) + ")",
                     " ".join(_f(v) for v in b["steerable"]["fraction"]),
                     f"{_f(b['ablation_readout_drop'])} (p {_f(b['ablation_null']['readout_drop_p_permuted'], 3)}, "
                     f"{_f(b['ablation_null']['readout_drop_p_matched'], 3)})"])
    lines += _table(["model", "index (depth)", "dose", "fit KL off-label / budget", "on-target LD shift (p)",
                     "specificity, row (p)", "specificity, column (p)", "items steered",
                     "ablation readout drop (p permuted, matched)"],
                    rows)
    lines += register_steering(res)
    t = res.steering_transfer
    if t:
        models = t["models"]
        lines += ["", "Fraction of b's own steering effect that a's vector, carried through the linear map, achieves "
                  "at b's half-max dose, with its p against a's label-permuted vectors through the same map "
                  "(rows a, columns b):", ""]
        cell = [[f"{_f(t['fraction_mean'][i][j])} (p {_f(t['null_p_permuted'][i][j], 3)})"
                 if t["fraction_mean"][i][j] is not None else "n/a" for j in range(len(models))]
                for i in range(len(models))]
        lines += _table(["a \\ b", *models], [[a, *cell[i]] for i, a in enumerate(models)])
        lines += transfer_sections(t)
    return lines + [""]


def register_steering(res: Results) -> list[str]:
    """The chosen point's on-target shift and row specificity on each register's held-out items alone."""
    rows = [[m, g, " ".join(_f(v) for v in t["on_target_ld"]) + " (p " + " ".join(
                _f(v, 3) for v in t["on_target_p_permuted"]) + ")",
             " ".join(_f(v) for v in t["specificity_row"]) + " (p " + " ".join(
                _f(v, 3) for v in t["specificity_row_p"]) + ")"]
            for m, s in res.steering.items() for g, t in (s["best"].get("by_register") or {}).items()]
    return ["", "The same chosen point on each register's held-out items alone (the same shifts and nulls; explicit "
            "texts name the emotion, implicit ones do not):", "",
            *_table(["model", "register", "on-target LD shift (p)", "specificity, row (p)"], rows)] if rows else []


def transfer_sections(t: dict[str, Any]) -> list[str]:
    """Steering transfer per register of the held-out items and with the words partialled out of both models."""
    sections = t.get("sections") or {}
    if not sections:
        return []
    models, rows = t["models"], []
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            if t["fraction_mean"][i][j] is None:
                continue
            cells = [f"{_f(t['fraction_mean'][i][j])} (p {_f(t['null_p_permuted'][i][j], 3)})"]
            for g in sections.values():
                value, p = g["fraction_mean"][i][j], g["null_p_permuted"][i][j]
                cells.append("n/a" if value is None else f"{_f(value)} (p {_f(p, 3)})")
            rows.append([f"{a} -> {b}", *cells])
    return ["", "The same fraction on each register's held-out items alone and with the words partialled out of "
            "both models (a's vectors and the map from what a ridge map from the prompts' words does not predict; "
            "b's own effect as above), each with its p against a's label-permuted vectors:", "",
            *_table(["a -> b", "all", *sections], rows)]


def quantisation_notes(res: Results) -> list[str]:
    """What each quantised model's numbers carry: weight rounding (int8), and for LLM.int8 the batch noise its
    equivalence check measured, below which an effect is not resolved."""
    notes = []
    for m, eq in sorted(res.equivalence.items()):
        quant = eq.get("quantization")
        if not quant:
            continue
        worst = max(v for v in eq["batch_noise"].values() if v is not None)
        if quant == "int8":
            notes.append(f"{m} ran in weight-only int8 (torchao): batch-invariant (a prompt's label logits move "
                         f"{worst:.1g} with its batch), so fast patching equals its oracle; activations and effects "
                         "carry the weights' rounding.")
        else:
            notes.append(f"{m} ran in {quant} (bitsandbytes): int8 batch noise up to {worst:.2g} logits (a "
                         "prompt's label logits alone vs in a batch or through a cached prefix); its patching and "
                         f"steering effects smaller than that are not resolved (equivalence/{m}.json).")
    return notes


def caveats(res: Results, organisms: list[str]) -> list[str]:
    notes = []
    if organisms:
        notes.append(f"{', '.join(organisms)}: demo organisms trained on this dataset's readout task; they read the "
                     "emotion by construction and say nothing about the real models they are named after.")
    notes += quantisation_notes(res)
    for m, s in res.sweeps.items():
        excluded = {c: v["excluded"] for c, v in s["contrast_counts"].items() if v["excluded"]}
        if excluded:
            notes.append(f"{m}: {sum(excluded.values())} of {len(s['pairs'])} pairs below min_separation "
                         f"{s['min_separation']} were left out of the patching summaries ({excluded}).")
    for family, f in (res.alignment_summary or {}).get("families", {}).items():
        if f["n_significant"] < f.get("min_tests_at_floor", 1):
            notes.append(f"{family}: {f['n_significant']} of {f['n_tests']} significant, but with alignment.n_perm "
                         f"permutations no p is below {_f(f['p_floor'], 3)}, and Benjamini-Hochberg over "
                         f"{f['n_tests']} tests calls any significant only when at least {f['min_tests_at_floor']} "
                         "sit at that floor: the count is the resolution of the test, not evidence against "
                         "alignment; raise alignment.n_perm.")
    for m, r in res.readout.items():
        if r["accuracy_calibrated"] < r["chance"] + WEAK_READOUT * (1 - r["chance"]):
            notes.append(f"{m} reads the emotion weakly (calibrated accuracy {_f(r['accuracy_calibrated'])}): its "
                         "patching effects rest on the pairs it does separate.")
    return ["## Caveats", "", *(f"- {n}" for n in notes or ["none found in the files"]), ""]


def resolution_section(res: Results) -> list[str]:
    """What the run's design resolves, from its dataset card's frames and the statistics' alpha and power (power in
    frames, :func:`emolens.stats.power.design_resolution`), with a warning when it has fewer frames than the
    design calibration covers: the tests then run, but their false-positive rates there are not known."""
    card, settings = res.dataset_card, res.statistics.get("power", {})
    if not card.get("n_frames") or not emotions_of(res):
        return []
    r = design_resolution(card["n_frames"], card["n_prompts"], len(emotions_of(res)), settings.get("alpha", 0.05),
                          settings.get("power", 0.8))
    lines = ["## What can this design resolve?", "",
             f"{r['n_frames']} frames ({card['n_prompts']} prompts), alpha {r['alpha']}, power {r['power']}: the "
             f"smallest effect a test over frames detects is Cohen's d {_f(r['detectable_d'])} (over the held-out half "
             f"of alignment, k and steering: d {_f(r['detectable_d_half'])}); for a probe, an accuracy "
             f"{_f(r['accuracy_gain'])} above chance ({_f(r['chance'])}) at the least (frames that differ in "
             "difficulty need more; two-sided t-test over frames, statsmodels TTestPower).", ""]
    if r["below_calibration"]:
        lines += [f"**Warning:** {r['n_frames']} frames, fewer than the {r['calibrated_frames']} the calibration "
                  "suite simulates (docs/statistics.md): no false-positive rate of these tests is known at this size, "
                  f"and alignment, k and steering test on {r['n_frames'] // 2}; read every count below as "
                  "provisional.", ""]
    return lines


def render(results: str | Path, organisms: list[str] | None = None) -> str:
    """The findings page of a profile's results directory, as markdown."""
    res = load(results)
    profile = Path(results).name
    emotions = ", ".join(emotions_of(res)) or "none found"
    return "\n".join([f"# What the run found: profile `{profile}`", "",
                      f"Emotions: {emotions}. Models: {', '.join(res.readout) or 'none'}. Every number below is "
                      "read from the result files.", "", *resolution_section(res),
                      *readout_section(res), *probe_section(res), *length_section(res), *patching_section(res),
                      *heads_section(res), *attention_mlp.section(results, list(res.readout), _table),
                      *steering_section(res), *robustness_section(res), *alignment_section(res),
                      *caveats(res, organisms or [])])


def run(results: str | Path, out: str | Path, organisms: list[str] | None = None) -> None:
    """Write ``findings.md`` for a profile's results, atomically."""
    text = render(results, organisms)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    log.info("wrote %s", out)
