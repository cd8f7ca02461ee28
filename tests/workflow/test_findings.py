"""The findings page is generated from the result files: its numbers are the files' numbers."""

import json
import re

from emolens.report.findings import render


def test_findings_page_reports_the_files_numbers(mini_workdir, wf):
    results = mini_workdir / wf.results
    page = (results / "findings.md").read_text()
    assert page == render(results, organisms=["pythia", "gemma"])  # the workflow's page, from the files
    for path in (results / "readout").glob("*.json"):
        readout = json.loads(path.read_text())
        row = next(line for line in page.splitlines() if line.startswith(f"| {path.stem} | "))
        assert f"| {readout['accuracy']:.2f} | {readout['accuracy_calibrated']:.2f} |" in row
    for heading in ("Does each model read the emotion?", "Where does the emotion become decodable?",
                    "Where is the emotion carried?", "Which heads move it?", "Is it the same across models?",
                    "Caveats"):
        assert f"## {heading}" in page
    assert "demo organisms trained on this dataset" in page and not re.search(r"\bnan\b", page.lower())
    pair = json.loads((results / "alignment" / "summary.json").read_text())["pairs"][0]  # one pair: per depth too
    (la, lb), (na, nb), cka = pair["matched_layers"][-1], pair["n_layers"], pair["measures"]["linear_cka"]
    row = next(line for line in page.splitlines() if line.startswith(f"| {la} / {lb} | "))
    assert row.startswith(f"| {la} / {lb} | {la / na:.2f} / {lb / nb:.2f} | {cka['value'][-1]:.2f} "
                          f"(null {cka['null_mean'][-1]:.2f}, p ")


def test_findings_page_of_one_model_says_the_cross_model_phases_were_skipped(one_model_workdir, wf):
    page = (one_model_workdir / wf.results / "findings.md").read_text()
    assert "Skipped: the profile has one model" in page
