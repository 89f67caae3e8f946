"""Every architecture and depth of the zoo prunes at threshold 0.5 and runs forward, at its smallest input."""

from __future__ import annotations

import numpy as np
import pytest

from kestrel_trainer.models.registry import create_model, get_entry
from kestrel_trainer.models.summary import describe
from kestrel_trainer.prune.rule import PruneOptions
from kestrel_trainer.prune.run import prune_model
from tests.models.specs import ALL_VARIANTS, make_spec

from .conftest import expected_params, spread_filters

# Every (arch, depth) with the default head, and the families whose own head differs in kind
# (Flatten -> FC layers, a 1x1 conv classifier) with retain_head.
VARIANTS = [(a, n, False) for a, n in ALL_VARIANTS] + [
    ("vgg", 16, True), ("alexnet", None, True), ("squeezenet", None, True), ("darknet", 19, True)]


@pytest.mark.slow  # builds every variant twice (the model, then the pruned model), like test_families' slow test
@pytest.mark.parametrize("arch,n,retain_head", VARIANTS,
                         ids=[f"{a}{n or ''}{'-head' if h else ''}" for a, n, h in VARIANTS])
def test_prunes_at_half_and_runs_forward(arch, n, retain_head):
    size = get_entry(arch).min_input
    model = create_model(make_spec(arch, n, channels=1, size=size, retain_head=retain_head), 3)
    spread_filters(model)
    pruned, rows = prune_model(model, PruneOptions(threshold=0.5))
    assert any(r["kept"] < r["total"] for r in rows), "nothing pruned"
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]
    probs = pruned(np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32), training=False).numpy()
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # `model info` prints describe(); its count equals the textbook formula over the pruned shapes.
    info = describe(pruned, get_entry(arch).block_of, verbose=False)
    reported = int(info.split("parameters: ")[1].split(" total")[0].replace(",", ""))
    assert reported == expected_params(pruned) < expected_params(model)
