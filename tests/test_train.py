"""Training: the loss falls, a killed run resumes exactly, and training conditions like sampling."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from midiffusion.cli.main import main
from midiffusion.diffusion.conditioning import ConditioningSpec
from midiffusion.diffusion.denoiser import LMIGuidedDenoiser
from midiffusion.diffusion.schedules import DDPMSchedule, ve_to_vp
from midiffusion.training import checkpoint
from midiffusion.training.checkpoint import CHECKPOINT
from midiffusion.training.config import TrainConfig
from midiffusion.training.data import load_training_slices
from midiffusion.training.trainer import LOSS_LOG, Trainer


@pytest.fixture(scope="module")
def data(tiny_training_set):
    return load_training_slices(tiny_training_set, 32)[0]


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.ema.state_dict().items()}


def test_loss_falls_on_a_tiny_set(data, tmp_path):
    config = TrainConfig.load("tiny")
    trainer = Trainer(config, data, tmp_path)
    losses = [trainer.train_step() for _ in range(40)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_crop_training_sees_windows_and_rejects_bad_sizes(data, tmp_path):
    config = TrainConfig.load("tiny")
    config.crop = 16
    trainer = Trainer(config, data, tmp_path)
    y, _src, self_map, _kind = trainer._batch()
    assert y.shape == self_map.shape == (config.batch_size, 1, 16, 16)
    # each window is a real part of a training slice (or its mirror image)
    for window in y[:, 0].numpy():
        assert any(
            (im[i : i + 16, j : j + 16] == window).all()
            for im in np.concatenate([data, data[:, ::-1, :]])
            for i in range(17)
            for j in range(17)
        )
    assert np.isfinite(trainer.train_step())
    for bad in (7, 48):  # not a multiple of the network's stride 2; larger than the grid
        config.crop = bad
        with pytest.raises(ValueError, match="crop"):
            Trainer(config, data, tmp_path / str(bad))


def test_augmentation_mirrors_left_right_never_front_back(tmp_path):
    # axis 0 of a slice runs right-left, axis 1 anterior (data/sets.py); random slices make the
    # two flips distinguishable
    data = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    trainer = Trainer(TrainConfig.load("tiny"), data, tmp_path)
    refs = {
        (kind, k): data[k] if kind == "same" else data[k][::-1, :]
        for kind in ("same", "mirrored")
        for k in range(3)
    }
    seen = set()
    for _ in range(8):
        y, _src, self_map, _kind = trainer._batch()
        for image, smap in zip(y[:, 0].numpy(), self_map[:, 0], strict=True):
            kind, k = next(key for key, ref in refs.items() if np.array_equal(image, ref))
            seen.add(kind)
            banked = trainer.self_maps[k, 0]  # the banked self-LMI travels with its slice
            assert torch.equal(smap, banked if kind == "same" else banked.flip(0))
    assert seen == {"same", "mirrored"}


def test_kill_and_resume_equals_an_uninterrupted_run(data, tmp_path):
    config = TrainConfig.load("tiny")
    straight = Trainer(config, data, tmp_path / "a")
    straight.fit(8, progress=False)

    first = Trainer(config, data, tmp_path / "b")
    first.fit(5, progress=False)  # checkpoints every 5 steps
    first_seconds = first.compute_seconds
    assert first_seconds > 0
    del first  # "killed" after its checkpoint
    torch.manual_seed(1234)  # a new process would not share the old RNG state
    second = Trainer(config, data, tmp_path / "b")
    assert second.resume() and second.step == 5
    second.fit(8, progress=False)

    a, b = _weights(straight), _weights(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert second.compute_seconds > first_seconds  # compute carries over the resume
    lines = (tmp_path / "b" / "loss.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in lines[1:]] == list(range(1, 9))


def test_learning_rate_holds_then_falls_along_a_cosine_to_its_floor(data, tmp_path):
    config = TrainConfig.load("tiny")  # 20 iterations, lr 1e-3
    config.lr_decay_from, config.lr_min = 10, 1e-4
    trainer = Trainer(config, data, tmp_path)
    rates = [trainer.learning_rate(step) for step in range(21)]
    assert rates[:11] == [1e-3] * 11
    assert rates[15] == pytest.approx(5.5e-4)  # halfway down
    assert rates[20] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(rates[10:]))
    trainer.fit(12, progress=False)  # the optimiser really uses it
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(trainer.learning_rate(11))
    constant = Trainer(TrainConfig.load("tiny"), data, tmp_path / "constant")
    assert {constant.learning_rate(s) for s in range(21)} == {1e-3}


def test_resume_refuses_a_different_config(data, tmp_path):
    Trainer(TrainConfig.load("tiny"), data, tmp_path).fit(5, progress=False)
    other = TrainConfig.load("tiny")
    other.lr = 0.5
    with pytest.raises(ValueError, match="another config"):
        Trainer(other, data, tmp_path).resume()
    assert (tmp_path / CHECKPOINT).is_file()


@pytest.mark.parametrize("family", ["clean", "faithful"])
def test_training_and_sampling_build_identical_conditions(data, family, tmp_path):
    """The training step and the sampler's denoiser must feed the network the same maps."""
    config = TrainConfig.load("tiny")
    if family == "faithful":
        config.conditioning = TrainConfig.load("t1w-faithful").conditioning
    spec = ConditioningSpec.from_dict(config.conditioning)
    schedule = DDPMSchedule()
    y01 = torch.from_numpy(data[:3]).unsqueeze(1)
    sigma = schedule.sigmas[[10, 300, 900]].float()
    x_ve = spec.to_model(y01) + sigma.view(-1, 1, 1, 1) * torch.randn_like(y01)

    trainer = Trainer(config, data, tmp_path)
    trainer.train_step()  # the training step runs with this conditioning
    train_cond = trainer.spec.condition(y01, x_ve, sigma, trainer.self_maps[:3])

    seen = {}

    class Spy(torch.nn.Module):  # records what the network is given; a real forward otherwise
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond, mask=None, kind=None):
            seen["cond"] = cond
            return self.net(x, t, cond, mask, kind)

    denoiser = LMIGuidedDenoiser(Spy(trainer.net), schedule, spec, y01, guidance=1.0)
    denoiser(x_ve, sigma)
    assert torch.equal(seen["cond"], train_cond)
    assert train_cond[:, 0].std() > 0  # not a trivially constant map


def test_warm_start_from_a_stored_model(data, tmp_path, tiny_model_store, monkeypatch):
    from midiffusion.cli.train import init_from_store

    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    card = tiny_model_store.card("tiny")
    trainer = Trainer(TrainConfig.load("tiny"), data, tmp_path)
    init_from_store(trainer, "tiny:1")
    assert trainer.step == card.training["iterations"]
    assert trainer.compute()["seconds"] == card.training["compute"]["seconds"] > 0
    stored = load_file(str(tiny_model_store.verified("tiny").weights_path))
    for k, v in trainer.net.state_dict().items():
        assert torch.equal(v, stored[k]), k
    # asked for no iterations, the run still holds a checkpoint: the stored weights, to publish
    # with other sampling settings
    trainer.fit(trainer.step, progress=False)
    saved = checkpoint.read_ema(tmp_path / CHECKPOINT)
    for k, v in stored.items():
        assert torch.equal(saved[k], v), k
    assert checkpoint.read_meta(tmp_path / CHECKPOINT)["step"] == trainer.step
    other = TrainConfig.load("tiny")
    other.network = {**other.network, "base_channels": 16}
    with pytest.raises(ValueError, match="another network"):
        init_from_store(Trainer(other, data, tmp_path / "o"), "tiny")


def test_training_refuses_an_evaluation_set(tiny_training_set, tmp_path, capsys):
    evaluation = tmp_path / "mni-synth"
    shutil.copytree(tiny_training_set, evaluation)
    (evaluation / "manifest.json").write_text(
        json.dumps({"set": "mni-synth", "kind": "evaluation"})
    )
    run = ["train", "--config", "tiny", "--iterations", "1", "--out", str(tmp_path / "run")]
    assert main([*run, "--data", str(evaluation)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "not a training set" in err and "'evaluation'" in err
    assert not (tmp_path / "run").exists()
    # a training set's manifest, and a plain folder of volumes without one, are accepted
    (evaluation / "manifest.json").write_text(json.dumps({"set": "t1-train", "kind": "training"}))
    assert len(load_training_slices(evaluation, 32)[0]) == len(
        load_training_slices(tiny_training_set, 32)[0]
    )


def _distilling(guidance: float = 3.0, sigma_min: float = 2.0) -> TrainConfig:
    tiny = TrainConfig.load("tiny")
    return dataclasses.replace(
        tiny, teacher="tiny:1", distill_guidance=guidance, distill_sigma_min=sigma_min
    )


def _teacher() -> torch.nn.Module:
    """The stored tiny model, as ``midiffusion train`` loads a teacher (MIDIFF_MODEL_DIR set)."""
    from midiffusion.cli.train import load_teacher

    return load_teacher(_distilling())


def test_guided_targets_follow_the_guidance_window_and_the_dropped_condition(
    data, tiny_model_store, monkeypatch
):
    from midiffusion.training.distill import guided_targets

    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    teacher = _teacher().eval()
    spec = ConditioningSpec.from_dict(TrainConfig.load("tiny").conditioning)
    schedule = DDPMSchedule()
    y01 = torch.from_numpy(data[:4]).unsqueeze(1)
    t = torch.tensor([900, 100, 900, 100])
    sigma = schedule.sigmas[t].float()
    x_ve = spec.to_model(y01) + sigma.view(-1, 1, 1, 1) * torch.randn_like(y01)
    cond = spec.condition(y01, x_ve, sigma, spec.self_map(y01))
    x_vp = ve_to_vp(x_ve, sigma.view(-1, 1, 1, 1))
    keep = torch.tensor([True, True, False, False])
    with torch.no_grad():
        eps_c = teacher(x_vp, t.float(), cond, torch.ones(4, dtype=torch.bool))
        eps_u = teacher(x_vp, t.float(), cond, torch.zeros(4, dtype=torch.bool))
    got = guided_targets(teacher, x_vp, t, cond, keep, sigma, 3.0, 2.0, "fp32")
    assert sigma[0] > 2.0 > sigma[1]
    torch.testing.assert_close(got[0], eps_u[0] + 3.0 * (eps_c[0] - eps_u[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], eps_c[1], atol=1e-5, rtol=0)  # below the window
    torch.testing.assert_close(got[2:], eps_u[2:], atol=1e-5, rtol=0)  # condition dropped
    assert (eps_c[0] - eps_u[0]).abs().mean() > 1e-3  # guidance really changes the target


def test_distillation_brings_one_pass_towards_the_teachers_guided_two(
    data, tiny_model_store, tiny_training_set, monkeypatch, tmp_path
):
    """A student trained from its teacher gets closer to the teacher's guided prediction, and
    the run resumes with its teacher like any other."""
    from midiffusion.diffusion.denoiser import classifier_free

    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    config = _distilling()
    config.iterations, config.lr = 130, 2e-3
    path = tmp_path / "distil.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    teacher = _teacher().eval()
    spec = ConditioningSpec.from_dict(config.conditioning)
    schedule = DDPMSchedule()
    y01 = torch.from_numpy(data[:8]).unsqueeze(1)
    t = torch.full((8,), 800)
    sigma = schedule.sigmas[t].float()
    gen = torch.Generator().manual_seed(5)
    x_ve = spec.to_model(y01) + sigma.view(-1, 1, 1, 1) * torch.randn(y01.shape, generator=gen)
    cond = spec.condition(y01, x_ve, sigma, spec.self_map(y01))
    x_vp = ve_to_vp(x_ve, sigma.view(-1, 1, 1, 1))
    on = torch.ones(8, dtype=torch.bool)
    with torch.no_grad():
        guided = classifier_free(
            teacher(x_vp, t.float(), cond, on), teacher(x_vp, t.float(), cond, ~on), 3.0
        )

    def gap(net: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(((net.eval()(x_vp, t.float(), cond, on) - guided) ** 2).mean())

    before = gap(teacher)
    out = tmp_path / "run"
    run = ["train", "--data", str(tiny_training_set), "--config", str(path), "--out", str(out)]
    assert main([*run, "--iterations", "30"]) == 0  # starts as the teacher, at its step
    assert main(run) == 0  # resumed at 30, with the teacher loaded again
    student = Trainer(config, data, out, teacher=teacher)
    assert student.resume()
    assert student.step == 130  # the warm start counts on from the teacher's iterations
    assert gap(student.ema) < 0.8 * before, (gap(student.ema), before)


def test_a_distilling_config_needs_its_teacher(data, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        TrainConfig(distill_guidance=2.0)
    with pytest.raises(ValueError, match="distill_guidance"):
        TrainConfig(teacher="t1w:14")
    with pytest.raises(ValueError, match="teacher"):
        Trainer(_distilling(), data, tmp_path)  # the config names one, none is given


def test_distilling_runs_draw_their_noise_levels_mostly_inside_the_guidance_window():
    from midiffusion.training.distill import distill_timesteps

    schedule = DDPMSchedule()
    gen = torch.Generator().manual_seed(0)
    t = distill_timesteps(schedule, 20000, 3.0, 0.75, gen)
    inside = schedule.sigmas[t] >= 3.0
    # 0.75 drawn inside, plus the share of the uniform quarter that lands there
    share = 0.75 + 0.25 * float((schedule.sigmas >= 3.0).float().mean())
    assert float(inside.float().mean()) == pytest.approx(share, abs=0.01)
    assert int(t.min()) < 100 and int(t.max()) == schedule.num_timesteps - 1
    only = distill_timesteps(schedule, 2000, 3.0, 1.0, gen)
    assert bool((schedule.sigmas[only] >= 3.0).all())


def test_sampler_states_are_the_states_the_guided_sampler_visits(
    data, tiny_model_store, monkeypatch
):
    """Each step's state and condition as ``LMIGuidedDenoiser`` under Euler ancestral meets
    them, step-major, with the teacher's two predictions there."""
    from midiffusion.diffusion.samplers import sample_euler_ancestral
    from midiffusion.training.distill import sampler_states

    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    teacher = _teacher().eval()
    spec = ConditioningSpec.from_dict(TrainConfig.load("tiny").conditioning)
    schedule = DDPMSchedule()
    src = torch.from_numpy(data[:3]).unsqueeze(1)
    x_vp, t, cond, sigma, eps_c, eps_u = sampler_states(
        teacher,
        schedule,
        spec,
        src,
        spec.self_map(src),
        4,
        3.0,
        2.0,
        "fp32",
        torch.Generator().manual_seed(7),
    )
    sigmas = schedule.sampling_sigmas(4).float()
    assert x_vp.shape == (12, 1, *src.shape[2:]) and cond.shape == (12, 2, *src.shape[2:])
    torch.testing.assert_close(sigma, sigmas[:-1].repeat_interleave(3))

    visited = []
    gen = torch.Generator().manual_seed(7)
    denoiser = LMIGuidedDenoiser(
        teacher, schedule, spec, src, 3.0, clip=True, precision="fp32", guidance_sigma_min=2.0
    )
    x = torch.randn(src.shape, generator=gen) * sigmas[0]
    visited.append(x)
    sample_euler_ancestral(
        denoiser, x, sigmas, callback=lambda i, n, x, d: visited.append(x), generator=gen
    )
    for step in range(4):
        rows = slice(3 * step, 3 * step + 3)
        want = ve_to_vp(visited[step], sigmas[step])
        torch.testing.assert_close(x_vp[rows], want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        on = torch.ones(12, dtype=torch.bool)
        torch.testing.assert_close(eps_c, teacher(x_vp, t, cond, on), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eps_u, teacher(x_vp, t, cond, ~on), atol=1e-4, rtol=1e-4)


def test_a_sampler_state_run_trains_and_resumes(
    data, tiny_model_store, tiny_training_set, monkeypatch, tmp_path
):
    monkeypatch.setenv("MIDIFF_MODEL_DIR", str(tiny_model_store.root))
    config = dataclasses.replace(_distilling(), distill_states="sampler", distill_steps=3)
    config.iterations, config.batch_size = 16, 2  # the teacher, tiny:1, is at step 10
    config.log_every = 1
    path = tmp_path / "visited.json"
    path.write_text(json.dumps(dataclasses.asdict(config)))
    out = tmp_path / "run"
    run = ["train", "--data", str(tiny_training_set), "--config", str(path), "--out", str(out)]
    assert main([*run, "--iterations", "13"]) == 0
    assert main(run) == 0
    student = Trainer(config, data, out, teacher=_teacher())
    assert student.resume() and student.step == 16
    losses = [float(r["loss"]) for r in csv.DictReader((out / LOSS_LOG).open())]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    with pytest.raises(ValueError, match="whole slices"):
        dataclasses.replace(config, crop=32)
    with pytest.raises(ValueError, match="accepted: forward, sampler"):
        dataclasses.replace(config, distill_states="ode")
