"""The public LMI API: shapes, settings round trip, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from midiffusion.lmi import LMIResult, LMISettings, local_mutual_information


@pytest.mark.parametrize("mode", ["clean", "faithful"])
@pytest.mark.parametrize("shape", [(1, 1, 5, 11), (3, 1, 16, 9)])
def test_outputs_shaped_like_inputs_at_any_size(mode, shape):
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(shape, generator=gen)
    target = torch.rand(shape, generator=gen)
    result = local_mutual_information(source, target, mode=mode)
    assert isinstance(result, LMIResult)
    assert result.aligned.shape == shape and result.similarity.shape == shape
    assert result.similarity.dtype == source.dtype
    # Every aligned value is a target value from the search window (or the zero padding).
    allowed = set(target.flatten().tolist()) | {0.0}
    assert set(result.aligned.flatten().tolist()) <= allowed


def test_settings_round_trip_and_replay():
    settings = LMISettings(mode="clean", patch_size=5, search_radius=2, bandwidth=0.1)
    data = settings.to_dict()
    assert data == {
        "mode": "clean",
        "patch_size": 5,
        "search_radius": 2,
        "bins": None,
        "bandwidth": 0.1,
        "normalized": True,
    }
    assert LMISettings.from_dict(data) == settings
    source = torch.rand(1, 1, 9, 9)
    target = torch.rand(1, 1, 9, 9)
    a = local_mutual_information(source, target, **data).similarity
    b = local_mutual_information(
        source, target, patch_size=5, search_radius=2, bandwidth=0.1
    ).similarity
    assert torch.equal(a, b)
    assert LMISettings().to_dict()["mode"] == "clean"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "mode must be one of"),
        ({"patch_size": 4}, "patch_size"),
        ({"patch_size": 3.0}, "patch_size"),
        ({"mode": "faithful", "patch_size": 7}, "patch_size"),
        ({"search_radius": -1}, "search_radius"),
        ({"mode": "faithful", "search_radius": 2}, "search_radius"),
        ({"bins": 16}, "bins applies to mode='faithful'"),
        ({"mode": "faithful", "bins": 1}, "bins"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"bandwidth": float("nan")}, "bandwidth"),
        ({"bandwidth": "wide"}, "bandwidth"),
        ({"mode": "faithful", "bandwidth": "auto"}, "auto"),
        ({"normalized": 1}, "normalized"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    source = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        local_mutual_information(source, source, **kwargs)
    with pytest.raises(ValueError, match=message):
        LMISettings(**kwargs)


def test_unknown_setting_in_dict_is_refused():
    with pytest.raises(ValueError, match="unknown LMI setting"):
        LMISettings.from_dict({"mode": "clean", "sigma": 2})


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (torch.rand(8, 8), torch.rand(8, 8), "B x 1 x H x W"),
        (torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8), "B x 1 x H x W"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9), "same shape"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.int64), torch.zeros(1, 1, 8, 8), "floating-point"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8).double(), "one dtype"),
        (torch.full((1, 1, 8, 8), float("nan")), torch.rand(1, 1, 8, 8), "NaN"),
        ([[0.0]], torch.rand(1, 1, 8, 8), "torch.Tensor"),
        (torch.rand(0, 1, 8, 8), torch.rand(0, 1, 8, 8), "empty"),
    ],
)
def test_bad_images_are_refused(source, target, message):
    with pytest.raises(ValueError, match=message):
        local_mutual_information(source, target)
