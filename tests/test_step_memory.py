"""``bench/step_memory.py``'s reading of compiled HLO: the stacked residuals it reports are
the elements of the heaviest ``while`` loop's tuple with a leading layer axis and a batch
axis after it, with their bytes by element type (hand counts on a hand-written module)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import step_memory  # noqa: E402

HLO = """
  %w = bf16[30,576,576]{2,1,0} parameter(0)
  %fwd = (s32[], bf16[30,576,576]{2,1,0}, f32[30,16,64,1536]{3,2,1,0}, f32[30,16,64,1536]{3,2,1,0}, bf16[30,32,64,576]{3,2,1,0}, bf16[16,64,576]{2,1,0}, pred[30,16,9,64,64]{4,3,2,1,0}) while(%init), condition=%cond, body=%body
  %bwd = (s32[], bf16[30,16,64,576]{3,2,1,0}) while(%init2), condition=%cond2, body=%body2
  %x = f32[30,16,64,1536]{3,2,1,0} get-tuple-element(%fwd), index=2
"""


def test_stacked_buffers_are_the_forward_loops_layer_and_batch_axed_elements():
    got = step_memory.stacked_buffers(HLO, num_layers=30, batch_dims={16, 32})
    # The forward loop carries more such bytes than the backward one. Its two f32 elements
    # share a shape and count twice; the stacked weight has no batch axis, the bf16[16,64,576]
    # no layer axis; a line that is not a loop counts for nothing.
    assert got == {
        "f32": {"arrays": 2, "bytes": 2 * 30 * 16 * 64 * 1536 * 4,
                "shapes": [[30, 16, 64, 1536], [30, 16, 64, 1536]]},
        "bf16": {"arrays": 1, "bytes": 30 * 32 * 64 * 576 * 2, "shapes": [[30, 32, 64, 576]]},
        "pred": {"arrays": 1, "bytes": 30 * 16 * 9 * 64 * 64, "shapes": [[30, 16, 9, 64, 64]]},
    }
