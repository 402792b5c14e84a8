import numpy as np
import pytest
import torch

from k25mini.config import count_params, nano
from k25mini.multimodal import K25ForConditionalGeneration, scatter_media


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25ForConditionalGeneration(nano()).eval()


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)]


def _ids(model, counts, text=(10, 11, 12)):
    pad = model.pad_id
    ids = list(text)
    for n in counts:
        ids += [256] + [pad] * n + [259] + list(text)
    return torch.tensor([ids])


def test_param_count_is_exact():
    m = K25ForConditionalGeneration(nano())
    assert sum(p.numel() for p in m.parameters()) == count_params(nano()).total


def test_vision_embeddings_land_on_the_pads(model):
    imgs = _images()
    counts = [sum(model.media_token_counts(im)) for im in imgs]
    ids = _ids(model, counts)
    fused = model.embed(ids, imgs)
    vis = model.encode_media(imgs)
    where = ids[0] == model.pad_id
    torch.testing.assert_close(fused[0, where], vis)
    torch.testing.assert_close(fused[0, ~where], model.language_model.model.embed_tokens(ids)[0, ~where])
    logits = model(ids, media=imgs)
    assert logits.shape == (1, ids.shape[1], nano().text.vocab_size)


def test_each_image_is_encoded_independently_of_its_batch(model):
    imgs = _images()
    both = model.encode_media(imgs)
    one = model.encode_media(imgs[:1])
    torch.testing.assert_close(both[: one.shape[0]], one, atol=1e-5, rtol=1e-5)


def test_loss_trains_the_vision_tower():
    torch.manual_seed(0)
    m = K25ForConditionalGeneration(nano())
    imgs = _images()
    counts = [sum(m.media_token_counts(im)) for im in imgs]
    ids = _ids(m, counts)
    labels = torch.full_like(ids, -100)
    labels[0, :-1] = torch.where(ids[0, 1:] == m.pad_id, -100, ids[0, 1:])
    loss = m.loss(ids, labels, media=imgs)
    loss.backward()
    assert torch.isfinite(loss)
    assert m.vision_tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_mismatched_media_raise(model):
    imgs = _images()
    counts = [sum(model.media_token_counts(im)) for im in imgs]
    ids = _ids(model, counts)
    with pytest.raises(ValueError, match="media"):
        model.embed(ids, imgs[:1])
    with pytest.raises(ValueError, match="media"):
        model.embed(ids, None)
    with pytest.raises(ValueError, match="media"):
        scatter_media(torch.zeros(1, 3, 4), torch.tensor([[1, 2, 3]]), torch.zeros(1, 4), pad_id=2 + 256)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(3, dtype=torch.long))
