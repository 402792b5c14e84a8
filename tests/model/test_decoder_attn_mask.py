"""K2Model.forward(attn_mask=...): an explicit mask equal to the causal one changes nothing; bad masks fail."""

import pytest
import torch

from k25mini.config import nano
from k25mini.model.decoder import K2ForCausalLM


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return K2ForCausalLM(nano().text).eval()


def test_causal_mask_equals_default(lm):
    ids = torch.randint(0, 200, (2, 9))
    pos = torch.arange(9).expand(2, 9)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9)
    with torch.no_grad():
        a = lm(ids)
        b = lm(ids, attn_mask=causal, position_ids=pos)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_left_padded_row_matches_unpadded(lm):
    ids = torch.randint(0, 200, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    cols = torch.arange(9)
    valid = cols >= 3
    mask = ((cols[None, :] <= cols[:, None]) & valid[None, :]) | torch.eye(9, dtype=torch.bool)
    pos = (cols - 3).clamp(min=0)[None]
    with torch.no_grad():
        ref = lm(ids)[:, -1]
        got = lm(padded, attn_mask=mask[None, None], position_ids=pos)[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bad_masks(lm):
    ids = torch.randint(0, 200, (1, 4))
    pos = torch.arange(4)[None]
    with pytest.raises(ValueError, match="attn_mask must be bool"):
        lm(ids, attn_mask=torch.ones(1, 1, 4, 4), position_ids=pos)
    with pytest.raises(ValueError, match="attn_mask must be bool"):
        lm(ids, attn_mask=torch.ones(1, 1, 4, 5, dtype=torch.bool), position_ids=pos)
    with pytest.raises(ValueError, match="position_ids"):
        lm(ids, attn_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        lm(ids, attn_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool), position_ids=pos,
           doc_ids=torch.zeros(1, 4, dtype=torch.long))
