"""The OPD step on two CPU ranks (gloo) with an FSDP2-sharded student: decoding stays in
lock-step when one rank's rows stop at once and the other's never do, results equal an unsharded
reference, and a rank with nothing to learn still joins backward. Runs tests/opd_driver.py under
torchrun. (Without ``synced_gpus`` the ranks' per-layer all-gathers mismatch and gloo aborts.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import launch, ok

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("opd_driver.py")
MAX_NEW_TOKENS = 7


@pytest.fixture(scope="module")
def results(opd_models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("opd_dist")
    ok(launch([DRIVER, "--models", opd_models_dir, "--out", out,
               "--max-new-tokens", MAX_NEW_TOKENS], ranks=2, timeout=300))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_decode_in_lock_step_and_match_the_unsharded_reference(results):
    early, late = results
    assert early["world_size"] == 2 and early["synced_default"] and late["synced_default"]
    stop_only = [[r[-1]] for r in early["responses"]]
    assert early["responses"] == stop_only  # rank 0 stopped at once ...
    assert all(len(r) == MAX_NEW_TOKENS for r in late["responses"])  # ... rank 1 never did
    # ... and both ran one prefill plus MAX_NEW_TOKENS - 1 decoding forwards, twice.
    for rank in results:
        assert rank["rollout_forwards"] == rank["second_rollout_forwards"] == MAX_NEW_TOKENS
        assert rank["responses"] == rank["reference_responses"]
        assert rank["positions"] == rank["reference_positions"] > 0
        assert rank["loss_sum"] == pytest.approx(rank["reference_loss_sum"], rel=1e-5, abs=1e-6)
        assert rank["grads_finite"]


def test_a_rank_with_nothing_to_learn_joins_backward(results):
    early, late = results
    # keep_stop_token=False: rank 0's rows hold only the stop token, so no supervised position.
    assert early["empty_positions"] == 0 and early["empty_loss_sum"] == 0.0
    assert late["empty_positions"] == late["positions"] > 0
    for rank in results:
        assert rank["empty_grads"] == rank["parameters"]  # backward reached every parameter
