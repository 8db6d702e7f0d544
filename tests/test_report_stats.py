"""Seeds and intervals in the report: the bootstrap statistics (numbers checked against direct
computations) and the report stage on crafted evaluation folders with per-utterance rows, single
and seeded (``<model>@seed<k>``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import report
from stages.common.cli import run_stage
from stages.eval.scoring import count_errors_batch, total
from stages.reporting.results import collect_results, csv_rows, display_rows
from stages.reporting.stats import (
    Bootstrap,
    average_stats,
    bootstrap_rates,
    corpus_rate,
    paired_shares,
    percentile_interval,
    preset_stats,
    seed_mean_sd,
)

# ---- the statistics --------------------------------------------------------------------------


def test_corpus_rate_is_the_scoring_modules_rate():
    refs = ["the cat sat on the mat", "a dog", "", "hello world again"]
    hyps = ["the cat sat mat", "a big dog", "extra words", "hello word again now"]
    counts = count_errors_batch(refs, hyps, "wer")
    errors = [c.errors for c in counts]
    ref_len = [c.ref_len for c in counts]
    assert corpus_rate(errors, ref_len) == total(counts).rate == 7 / 11
    assert corpus_rate([2, 1], [0, 0]) is None  # only empty references: undefined


def test_resampled_rates_recompute_the_corpus_rate_of_the_drawn_utterances():
    rng = np.random.default_rng(5)
    errors = rng.integers(0, 6, size=(2, 30))
    ref_len = rng.integers(1, 20, size=30)
    got = bootstrap_rates(errors, ref_len, 50, np.random.default_rng(9))
    # The same draws, done directly: utterance indices, then total edits / total units.
    idx = np.random.default_rng(9).integers(0, 30, size=(50, 30))
    expected = errors[:, idx].sum(axis=2).T / ref_len[idx].sum(axis=1)[:, None]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_percentile_interval_and_shares_on_known_samples():
    samples = np.arange(1001) / 1000
    assert percentile_interval(samples, 0.95) == pytest.approx((0.025, 0.975))
    assert percentile_interval(np.array([np.nan, np.nan]), 0.95) is None
    model = np.array([0.1, 0.2, 0.3, 0.4])
    base = np.array([0.2, 0.2, 0.2, np.nan])   # a tie counts as neither; NaN is left out
    assert paired_shares(model, base) == (1 / 3, 1 / 3)


def test_seed_mean_and_sd_exact():
    mean, sd = seed_mean_sd([0.10, 0.20, 0.30])
    assert mean == pytest.approx(0.2) and sd == pytest.approx(0.1)  # ddof=1
    assert seed_mean_sd([0.25, 0.25]) == (0.25, 0.0)
    assert seed_mean_sd([0.3]) == (0.3, None)  # one seed: unknown, not 0


def _utterances(n: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref_len = rng.integers(5, 25, size=n)
    return rng.binomial(ref_len, rate), ref_len


def test_interval_contains_the_estimate_and_narrows_with_more_utterances():
    widths = []
    for n in (40, 400, 4000):
        errors, ref_len = _utterances(n, 0.2, seed=n)
        cell = preset_stats({"m": errors[None]}, ref_len, stream="p", base=None,
                            settings=Bootstrap())["m"]
        low, high = cell.interval
        assert cell.mean == corpus_rate(errors, ref_len)
        assert low < cell.mean < high
        assert cell.sd is None and cell.p_better is None and cell.verdict is None
        widths.append(high - low)
    # the width shrinks like 1/sqrt(n): ~3.2x per 10x more utterances
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


def test_identical_model_ties_everywhere_and_is_not_distinguishable():
    errors, ref_len = _utterances(200, 0.2, seed=1)
    cells = preset_stats({"base": errors[None], "same": errors[None]}, ref_len, stream="p",
                         base="base", settings=Bootstrap())
    same = cells["same"]
    assert (same.p_better, same.p_worse) == (0.0, 0.0)
    assert same.verdict == "not distinguishable" and same.indistinguishable
    assert same.interval == cells["base"].interval  # same draws: paired
    assert cells["base"].p_better is None and cells["base"].verdict is None
    # Three seeds that each reproduce the base still tie on every draw (no float drift:
    # a naive mean of three equal rates can differ from the rate in its last bit).
    seeded = preset_stats({"base": errors[None], "same": np.stack([errors] * 3)}, ref_len,
                          stream="p", base="base", settings=Bootstrap())["same"]
    assert (seeded.p_better, seeded.p_worse, seeded.sd) == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(seeded.samples, cells["base"].samples)


def test_clearly_better_and_worse_models_and_a_near_tie():
    errors, ref_len = _utterances(300, 0.3, seed=2)
    better = errors // 3
    worse = np.minimum(errors + 2, ref_len + 5)
    near = errors.copy()
    near[::2] += 1          # one more error on half the utterances ...
    near[1::2] = np.maximum(near[1::2] - 1, 0)  # ... one fewer on the other half
    cells = preset_stats({"base": errors[None], "better": better[None], "worse": worse[None],
                          "near": near[None]}, ref_len, stream="p", base="base",
                         settings=Bootstrap())
    assert cells["better"].p_better == 1.0 and cells["better"].verdict == "better"
    assert cells["worse"].p_worse == 1.0 and cells["worse"].verdict == "worse"
    assert cells["near"].verdict == "not distinguishable"
    assert 0.05 < cells["near"].p_better < 0.95


def test_seeds_are_pooled_by_averaging_their_rates_on_each_draw():
    base, ref_len = _utterances(60, 0.3, seed=3)
    seeds = np.stack([_utterances(60, r, seed=10 + i)[0] for i, r in enumerate((.1, .2, .3))])
    settings = Bootstrap(resamples=200, bootstrap_seed=7)
    cells = preset_stats({"base": base[None], "opd": seeds}, ref_len, stream="aishell",
                         base="base", settings=settings)
    opd = cells["opd"]
    rates = seeds.sum(axis=1) / ref_len.sum()
    assert opd.seed_rates == pytest.approx(tuple(rates))
    assert opd.mean == pytest.approx(rates.mean()) and opd.sd == pytest.approx(rates.std(ddof=1))
    # The same draws for every seed: the resample's value is the mean of the seeds' rates.
    direct = bootstrap_rates(np.vstack([base, seeds]), ref_len, 200, settings.rng("aishell"))
    np.testing.assert_allclose(opd.samples, direct[:, 1:].mean(axis=1), rtol=1e-14)
    assert opd.p_better == np.mean(direct[:, 1:].mean(axis=1) < direct[:, 0])
    # Draws depend on (seed, preset) only: the base's interval ignores which rows exist.
    alone = preset_stats({"base": base[None]}, ref_len, stream="aishell", base="base",
                         settings=settings)
    assert alone["base"].interval == cells["base"].interval


def test_average_column_is_a_stratified_bootstrap():
    settings = Bootstrap(resamples=300)
    per_preset = []
    for i, preset in enumerate(("a", "b")):
        base, ref_len = _utterances(100, 0.3, seed=20 + i)
        opd = np.stack([base // 2, base // 3])
        per_preset.append(preset_stats({"base": base[None], "opd": opd}, ref_len,
                                       stream=preset, base="base", settings=settings))
    avg = average_stats(per_preset, base="base", confidence=0.95)
    assert avg["opd"].mean == pytest.approx(np.mean([c["opd"].mean for c in per_preset]))
    seed_avgs = np.mean([c["opd"].seed_rates for c in per_preset], axis=0)
    assert avg["opd"].sd == pytest.approx(np.std(seed_avgs, ddof=1))
    np.testing.assert_allclose(avg["opd"].samples,
                               (per_preset[0]["opd"].samples + per_preset[1]["opd"].samples) / 2)
    assert avg["opd"].verdict == "better" and avg["base"].p_better is None


def test_bootstrap_settings_are_checked():
    with pytest.raises(ValueError, match="confidence"):
        Bootstrap(confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(resamples=0)


# ---- the report stage on evaluation folders with rows ----------------------------------------

METRIC = {"aishell": "cer", "clean": "wer"}
N = 60


def write_eval(eval_dir: Path, folder: str, preset: str, errors, ref_len, *,
               ids=None, summary_extra=None) -> Path:
    """Rows (worst first) and summary of one evaluation, as stages.evaluate writes them."""
    out = eval_dir / folder
    out.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"utt{i:03d}" for i in range(len(errors))]
    rows = [{"id": u, "errors": int(e), "ref_len": int(n), "error_rate": e / n,
             f"{METRIC[preset]}_errors": int(e)}
            for u, e, n in zip(ids, errors, ref_len, strict=True)]
    rows.sort(key=lambda r: -r["errors"])
    path = out / f"test_{preset}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"metric": METRIC[preset], "rate": float(np.sum(errors) / np.sum(ref_len)),
               "errors": int(np.sum(errors)), "ref_len": int(np.sum(ref_len)),
               "utterances": len(rows), "preset": preset, "model_name": folder}
    summary |= summary_extra or {}
    (out / f"summary_{preset}.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def seeded_eval(tmp_path) -> Path:
    """base (one evaluation), base+OPD with seeds 1-3, teacher. On aishell OPD is clearly
    better than the base; on clean its seeds give the base's own transcripts, but one seed one
    error more (not distinguishable)."""
    eval_dir = tmp_path / "eval"
    ref_len = np.full(N, 10)
    base = {"aishell": np.tile([3, 4, 2, 5], N // 4), "clean": np.tile([2, 3, 1, 2], N // 4)}
    for preset, errors in base.items():
        write_eval(eval_dir, "student_base", preset, errors, ref_len)
        write_eval(eval_dir, "teacher", preset, np.zeros(N, int), ref_len)
    for seed, shift in ((1, 0), (2, 1), (3, 2)):
        write_eval(eval_dir, f"opd_base@seed{seed}", "aishell",
                   np.roll(np.tile([1, 2, 1, 0], N // 4), shift), ref_len)
        clean = base["clean"].copy()
        clean[0] += seed == 2
        write_eval(eval_dir, f"opd_base@seed{seed}", "clean", clean, ref_len)
    return eval_dir


def run(eval_dir: Path, out: Path, *extra) -> int:
    argv = ["--eval-dir", eval_dir, "--output-dir", out, "--presets", "aishell", "clean",
            *extra]
    return run_stage(report.main, report.build_parser(), [str(a) for a in argv])


def test_seeded_report_shows_mean_sd_intervals_and_the_marker(seeded_eval, tmp_path):
    out = tmp_path / "report"
    assert run(seeded_eval, out, "--seeds", "1", "2", "3") == 0
    md = (out / "report.md").read_text()
    table = collect_results(seeded_eval, ["aishell", "clean"], bootstrap=Bootstrap())
    header, body = display_rows(table)
    assert header == ["model", "aishell CER", "clean WER", "avg"]
    rows = {r[0]: r for r in body}
    # base: 140 errors / 400 units, one evaluation
    assert rows["base"][1].startswith("35.00 ± n/a [")
    # base+OPD on aishell: every seed 60 / 600 = 10 %, sd 0; better in every resample
    opd_aishell = rows["base+OPD"][1]
    assert opd_aishell.startswith("10.00 ± 0.00 [") and opd_aishell.endswith("(+71.43%)")
    # on clean: seeds 20.00, 20.17, 20.00 -> mean 20.0556, sd 0.0962; marked
    opd_clean = rows["base+OPD"][2]
    assert opd_clean.startswith("20.06 ± 0.10 [") and opd_clean.endswith("(-0.28%) ≈")
    assert "≈" not in rows["teacher"][1] and "≈" not in rows["base+OPD"][3]
    for line in body:
        assert f"| {' | '.join(line)} |" in md
    assert "base+OPD: seeds 1, 2, 3." in md
    assert "≈: not distinguishable from `base`" in md
    assert "95 % percentile bootstrap interval over utterances (1000 resamples" in md
    assert "## Paired bootstrap against the base" in md
    assert "| base+OPD | 1.000 | 0.000 ≈ | 1.000 |" in md

    frame = pd.read_csv(out / "results.csv").set_index("model")
    assert frame.loc["opd_base", "seeds"] == "1 2 3"
    assert frame.loc["opd_base", "aishell_cer"] == 10.0
    assert frame.loc["opd_base", "aishell_sd"] == 0.0
    assert frame.loc["opd_base", "aishell_p_better"] == 1.0
    assert frame.loc["opd_base", "clean_vs_base"] == "not distinguishable"
    assert frame.loc["opd_base", "clean_sd"] == pytest.approx(0.1, abs=0.01)
    assert pd.isna(frame.loc["student_base", "aishell_sd"])  # one evaluation: no sd
    assert pd.isna(frame.loc["student_base", "aishell_p_better"])
    lo, hi = frame.loc["student_base", ["aishell_low", "aishell_high"]]
    assert lo < 35.0 < hi
    assert frame.loc["teacher", "aishell_low"] == frame.loc["teacher", "aishell_high"] == 0.0
    doc = json.loads((out / "report.json").read_text())
    assert doc["seeds"]["opd_base"] == [1, 2, 3] and doc["intervals"]["resamples"] == 1000
    assert (out / "error_rates.png").stat().st_size > 5000


def test_single_seed_layout_keeps_its_table_and_adds_intervals(tmp_path):
    eval_dir = tmp_path / "eval"
    ref_len = np.full(N, 10)
    write_eval(eval_dir, "student_base", "aishell", np.full(N, 2), ref_len)
    write_eval(eval_dir, "opd_base", "aishell", np.full(N, 1), ref_len)
    table = collect_results(eval_dir, ["aishell"], bootstrap=Bootstrap())
    _, body = display_rows(table)
    # every utterance has the same counts, so every resample gives the same rate
    assert body == [["base", "20.00 [20.00, 20.00]", "20.00 [20.00, 20.00]"],
                    ["base+OPD", "10.00 [10.00, 10.00] (+50.00%)",
                     "10.00 [10.00, 10.00] (+50.00%)"]]
    row = csv_rows(table)[1]
    assert row["seeds"] == "" and row["aishell_sd"] is None and row["aishell_p_better"] == 1.0
    assert list(row)[:6] == ["model", "label", "aishell_cer", "aishell_rel_impr", "avg",
                             "avg_rel_impr"]


def test_summaries_without_rows_have_no_interval(tmp_path, capsys):
    eval_dir = tmp_path / "eval"
    write_eval(eval_dir, "student_base", "aishell", np.full(N, 2), np.full(N, 10))
    (eval_dir / "student_base" / "test_aishell.jsonl").unlink()
    out = tmp_path / "report"
    assert run(eval_dir, out, "--presets", "aishell") == 0
    md = (out / "report.md").read_text()
    assert "| base | 20.00 | 20.00 |" in md
    assert "No interval (1): student_base/aishell (no test_<preset>.jsonl" in md


@pytest.mark.parametrize("break_it, message", [
    (lambda d: write_eval(d, "opd_base@seed2", "aishell", np.full(N, 1), np.full(N, 10),
                          ids=[f"other{i}" for i in range(N)]),
     "cover different utterances"),
    (lambda d: (d / "opd_base@seed1" / "test_aishell.jsonl").write_text('{"id": "u1"}\n'),
     "`errors` and `ref_len` must be integers"),
    (lambda d: write_eval(d, "opd_base@seed1", "aishell", np.full(N, 1), np.full(N, 10),
                          summary_extra={"errors": 999}),
     "the summary beside them says 999; one of the two is stale"),
    (lambda d: write_eval(d, "opd_base", "aishell", np.full(N, 1), np.full(N, 10)),
     "opd_base has both a single evaluation"),
    (lambda d: (d / "opd_base@seed3" / "summary_clean.json").unlink(),
     "summary_clean.json missing while the other seeds have clean"),
])
def test_bad_seeded_inputs_are_named(seeded_eval, tmp_path, capsys, break_it, message):
    break_it(seeded_eval)
    assert run(seeded_eval, tmp_path / "report") == 1
    err = capsys.readouterr().err
    assert message in err, err
    if "different utterances" in message:
        assert "opd_base@seed2/test_aishell.jsonl" in err


def test_seeds_option_selects_and_requires_seed_folders(seeded_eval, tmp_path, capsys):
    table = collect_results(seeded_eval, ["aishell"], seeds=[1, 3], bootstrap=None)
    assert table.seeds("opd_base") == [1, 3] and not table.cells
    assert run(seeded_eval, tmp_path / "r", "--seeds", "1", "4") == 1
    assert "opd_base has no evaluation of seed(s) 4 (expected folders opd_base@seed4)" in \
        capsys.readouterr().err


def test_one_training_seed_is_named_in_the_footnote(seeded_eval, tmp_path):
    out = tmp_path / "report"
    assert run(seeded_eval, out, "--seeds", "2") == 0
    markdown = (out / "report.md").read_text()
    assert "One training seed per model (base+OPD: seed 2): no sd over seeds." in markdown
    assert "no training seeds" not in markdown
