"""A one-model profile (the usual first run on a new model) runs to a passing verification: the cross-model
phases (alignment pairs and summary, k, steering transfer) have no job, the log says so, and verification
records them as skipped."""

import json

CROSS_MODEL_RULES = {"align_pair", "align_summary", "stats_k", "steer_transfer", "steer_transfer_summary"}


def test_one_model_profile_runs_to_a_passing_verification(one_model_workdir, wf):
    log = (one_model_workdir / "log.txt").read_text()
    assert "One model (pythia): the cross-model phases" in log
    ran = wf.job_counts(log)
    assert ran["verify"] == 1 and ran["figures"] == 1 and not CROSS_MODEL_RULES & set(ran), ran

    results = one_model_workdir / wf.results
    verification = json.loads((results / "verification.json").read_text())
    assert verification["passed"], [c for c in verification["checks"] if not c["passed"]]
    checks = {c["check"]: c for c in verification["checks"]}
    assert checks["alignment"]["detail"].startswith("skipped: one model")
    assert "k skipped: one model" in checks["statistics"]["detail"]
    assert not (results / "alignment").exists() and not (results / "statistics" / "k.json").exists()

    figures = {p.name for p in (results / "figures").glob("*.png")}
    assert "probe_accuracy.png" in figures and "residual_effect_last_position.png" in figures
    assert not {"alignment.png", "steering_transfer.png"} & figures

    again = wf.run(one_model_workdir, "-n", "--cores", "2", config=one_model_workdir / "one_model.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]
