"""The OPD step on two CPU ranks (gloo) with an FSDP2-sharded student, one rank's rows stopping
at once and the other's never: on the decoding copy each rank stops on its own; the sharded model
decoding itself stays in lock-step (without ``synced_gpus`` its per-layer all-gathers would
mismatch and gloo abort); both equal an unsharded reference; a rank with nothing to learn still
joins backward. Runs tests/opd_driver.py under torchrun."""

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


def test_ranks_decode_on_their_own_and_match_the_unsharded_reference(results):
    early, late = results
    assert early["world_size"] == 2 and early["synced_default"] and late["synced_default"]
    stop_only = [[r[-1]] for r in early["responses"]]
    assert early["responses"] == stop_only  # rank 0 stopped at once ...
    assert all(len(r) == MAX_NEW_TOKENS for r in late["responses"])  # ... rank 1 never did
    # On the copies each rank decoded only as long as its own rows needed, twice (the step and
    # the keep_stop_token=False step): one prefill, then a forward per further token.
    assert early["copy_forwards"] == 2 * 1 and late["copy_forwards"] == 2 * MAX_NEW_TOKENS
    # The sharded model decoding itself: lock-step, MAX_NEW_TOKENS forwards on both ranks
    # (rank 0's rows long finished).
    assert early["sharded_rollout_forwards"] == late["sharded_rollout_forwards"] == MAX_NEW_TOKENS
    for rank in results:
        assert rank["responses"] == rank["reference_responses"] == rank["resharded_responses"]
        assert rank["resharded_loss_sum"] == pytest.approx(rank["loss_sum"], rel=1e-5, abs=1e-6)
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
