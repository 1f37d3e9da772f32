"""The model registry: listing, cards, and refusal of unknown or tampered models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from pydantic import ValidationError

from model_store import ModelCard, ModelIntegrityError, ModelNotFoundError, ModelStore
from model_store.registry import SHIPPED_ROOT


def test_lists_and_verifies_the_published_model(tiny_model_store):
    cards = tiny_model_store.list()
    assert [(c.name, c.version) for c in cards] == [("tiny", 1)]
    assert tiny_model_store.default_name() == "tiny"
    v = tiny_model_store.verified("tiny")
    assert v.weights_path.is_file() and v.card.parameters > 0
    assert v.card.conditioning.lmi.bandwidth == "auto"


def test_unknown_model_and_version_are_refused_with_what_exists(tiny_model_store):
    with pytest.raises(ModelNotFoundError, match="models in the store: tiny"):
        tiny_model_store.card("t2w")
    with pytest.raises(ModelNotFoundError, match="versions: 1"):
        tiny_model_store.card("tiny", 7)


def test_tampered_weights_are_refused(tiny_model_store, tmp_path):
    store = ModelStore(tmp_path / "copy")
    shutil.copytree(tiny_model_store.root, store.root)
    weights = store.directory("tiny", 1) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits of one stored weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the card"):
        store.verified("tiny")


def test_card_in_the_wrong_directory_is_refused(tiny_model_store, tmp_path):
    store = ModelStore(tmp_path / "copy")
    shutil.copytree(tiny_model_store.root, store.root)
    shutil.move(store.root / "tiny", store.root / "other")
    with pytest.raises(ModelIntegrityError, match="lives in another directory"):
        store.card("other")


def test_publish_adds_versions_and_never_leaves_partial_directories(tiny_model_store, tmp_path):
    store = ModelStore(tmp_path / "s")
    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    assert store.publish(card, v.weights_path).version == 1
    assert store.publish(card, v.weights_path).version == 2
    with pytest.raises(FileNotFoundError):
        store.publish(card, tmp_path / "missing.safetensors")
    assert sorted(p.name for p in (store.root / "tiny").iterdir()) == ["1", "2"]


def test_models_cli_verify_and_show(tiny_model_store):
    run = [sys.executable, "-m", "midiffusion.cli", "models", "--store", str(tiny_model_store.root)]
    out = subprocess.run([*run, "verify"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ok\ttiny v1\t")
    out = subprocess.run([*run, "show", "tiny"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["name"] == "tiny"
    bad = subprocess.run([*run, "show", "nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown model 'nope'" in bad.stdout


def test_store_is_torch_free():
    code = "import sys, model_store; model_store.ModelStore().list(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_publish_command_records_the_sampling_it_is_given(tiny_training_set, tmp_path):
    from midiffusion.cli.main import main
    from midiffusion.training.config import TrainConfig
    from midiffusion.training.data import load_training_slices
    from midiffusion.training.trainer import Trainer

    data, manifest = load_training_slices(tiny_training_set, 32)
    Trainer(TrainConfig.load("tiny"), data, tmp_path / "run", manifest).fit(1, progress=False)
    base = ["models", "--store", str(tmp_path / "store"), "publish", str(tmp_path / "run")]
    base += ["--name", "t", "--target-modality", "T1w", "--sampler", "euler-a", "--samples", "4"]
    assert main([*base, "--antithetic"]) == 0
    assert main([*base, "--no-anchor"]) == 0
    store = ModelStore(tmp_path / "store")
    paired, plain = store.card("t", 1).sampling, store.card("t", 2).sampling
    assert paired.antithetic is True and paired.samples == 4 and paired.anchor_mean > 0
    assert plain.antithetic is False and plain.anchor_mean is None
    assert paired.sampler == plain.sampler == "euler-a"
    stored = json.loads((store.root / "t" / "2" / "model.json").read_text())
    assert stored["sampling"]["anchor_mean"] is None  # every setting recorded, none implied


def test_publish_can_carry_another_cards_sampling_and_presets(
    tiny_model_store, tiny_training_set, tmp_path
):
    import shutil

    from midiffusion.cli.main import main
    from midiffusion.training.config import TrainConfig
    from midiffusion.training.data import load_training_slices
    from midiffusion.training.trainer import Trainer

    shutil.copytree(tiny_model_store.root, tmp_path / "store")
    data, manifest = load_training_slices(tiny_training_set, 32)
    Trainer(TrainConfig.load("tiny"), data, tmp_path / "run", manifest).fit(1, progress=False)
    base = ["models", "--store", str(tmp_path / "store"), "publish", str(tmp_path / "run")]
    base += ["--name", "tiny", "--target-modality", "T1w", "--sampling-from", "tiny:1"]
    assert main([*base, "--steps", "6"]) == 0
    store = ModelStore(tmp_path / "store")
    source, carried = store.card("tiny", 1).sampling, store.card("tiny", 2).sampling
    assert carried.steps == 6  # a flag overrides the carried value
    assert (carried.sampler, carried.guidance) == (source.sampler, source.guidance)
    assert carried.presets["fast"].steps == source.presets["fast"].steps == 2
    assert carried.presets["fast"].note == "carried from tiny v1: half the steps"

    fast = '{"steps": 1, "guidance": 1.0, "note": "one step"}'
    guided = ["--guidance", "2", "--guidance-sigma-min", "3", "--preset", f"fast={fast}"]
    assert main([*base, *guided, "--lookup-weight-head", "1"]) == 0
    third = store.card("tiny", 3).sampling
    assert (third.guidance, third.guidance_sigma_min, third.steps) == (2.0, 3.0, source.steps)
    assert (third.lookup_weight, third.lookup_weight_head) == (0.0, 1.0)
    assert third.preset("fast").model_dump(include={"steps", "guidance"}) == {
        "steps": 1,
        "guidance": 1.0,
    }
    assert main([*base[:-1], "tiny:3"]) == 0  # the lookup is carried like the rest
    assert store.card("tiny", 4).sampling.lookup_weight_head == 1.0
    # carried on again, a note keeps naming the card it was measured with
    assert main([*base[:-1], "tiny:2"]) == 0
    assert (
        store.card("tiny", 5).sampling.presets["fast"].note
        == "carried from tiny v1: half the steps"
    )
    # refused, and nothing published: an unknown card, a preset that is not JSON, an unknown one
    assert main([*base[:-1], "tiny:9"]) == 1
    assert main([*base, "--preset", "fast={steps: 1}"]) == 1
    assert main([*base, "--preset", 'turbo={"steps": 1}']) == 1
    assert [c.version for c in store.list()] == [1, 2, 3, 4, 5]


def test_the_default_is_an_explicit_alias_not_the_highest_version(tiny_model_store, tmp_path):
    store = ModelStore(tmp_path / "s")
    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    store.publish(card, v.weights_path)
    store.publish(card, v.weights_path)
    assert store.card("tiny").version == 2  # no alias: the latest
    store.set_default("tiny", 1)
    assert store.default_ref() == ("tiny", 1)
    assert store.card("tiny").version == 1 and store.verified("tiny").card.version == 1
    assert store.card("tiny", 2).version == 2  # the other stays reachable by number
    with pytest.raises(ModelNotFoundError):
        store.set_default("tiny", 5)
    assert store.default_ref() == ("tiny", 1)  # a refused alias changes nothing


def _archives(directory, tmp_path):
    import tarfile
    import zipfile

    zipped = tmp_path / "model.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in directory.iterdir():
            zf.write(p, f"tiny-1/{p.name}")
        zf.writestr("../../escape.txt", "an entry that points out of the archive")
    tarred = tmp_path / "model.tar.gz"
    with tarfile.open(tarred, "w:gz") as tf:
        for p in directory.iterdir():
            tf.add(p, f"export/{p.name}")
    return {"directory": directory, "zip": zipped, "tar.gz": tarred}


@pytest.mark.parametrize("kind", ["directory", "zip", "tar.gz"])
def test_import_installs_a_verified_model_from_a_folder_or_archive(
    tiny_model_store, tmp_path, kind
):
    source = _archives(tiny_model_store.directory("tiny", 1), tmp_path)[kind]
    store = ModelStore(tmp_path / "s")
    card = store.import_model(source)
    assert (card.name, card.version) == ("tiny", 1)
    assert store.verified("tiny", 1).card.sha256 == card.sha256
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert sorted(p.name for p in (store.root / "tiny").iterdir()) == ["1"]  # no temporaries
    with pytest.raises(ValueError, match="already in the store"):
        store.import_model(source)


def test_import_refuses_tampered_weights_and_leaves_nothing(tiny_model_store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_store.directory("tiny", 1), bad)
    weights = bad / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    store = ModelStore(tmp_path / "s")
    with pytest.raises(ModelIntegrityError, match="nothing was installed"):
        store.import_model(bad)
    assert store.list() == []
    (bad / "weights.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no weights\.safetensors"):
        store.import_model(bad)


def test_models_import_and_default_on_the_command_line(tiny_model_store, tmp_path, capsys):
    from midiffusion.cli.main import main

    base = ["models", "--store", str(tmp_path / "s")]
    assert main([*base, "import", str(tiny_model_store.directory("tiny", 1))]) == 0
    assert "imported tiny v1" in capsys.readouterr().out
    assert main([*base, "default", "tiny:1"]) == 0
    assert "default: tiny v1" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "aliases.json").read_text()) == {"default": "tiny:1"}
    assert main([*base, "default", "tiny"]) == 1
    assert "NAME:VERSION" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(SHIPPED_ROOT.glob("*/*/model.json")), ids=str)
def test_the_shipped_cards_validate_unchanged(path):
    raw = json.loads(path.read_text())
    card = ModelCard.model_validate(raw)
    assert json.loads(card.model_dump_json(exclude_unset=True)) == raw
    assert card.sampling.samples % 2 == 0 and card.sampling.antithetic  # antithetic pairs
    assert card.conditioning.lmi.mode == card.lmi_mode() == "clean"


def test_the_shipped_default_is_an_alias_to_a_verified_model():
    store = ModelStore(SHIPPED_ROOT)
    name, version = store.default_ref()
    assert version is not None  # named explicitly, not "the highest number"
    assert store.verified(name).card.version == version
    # the tree ships the serving default, one earlier version users may pin, and at most one
    # candidate under evaluation (14 MB each); older ones live in git history
    assert len(list(SHIPPED_ROOT.glob("*/*/weights.safetensors"))) <= 3


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("sampling", {"sampler": "heun"}, "sampler"),
        ("sampling", {"steps": 5000}, "exceeds the schedule"),
        ("sampling", {"anchor_mean": 1.5}, "anchor_mean"),
        ("sampling", {"clip": True}, "clip"),
        ("network", {"base_channels": 0}, "base_channels"),
        ("schedule", {"beta_start": 0.5, "beta_end": 0.1}, "beta_start < beta_end"),
        ("conditioning", {"state": "noisy"}, "state"),
    ],
)
def test_a_bad_card_is_refused_at_publish(tiny_model_store, tmp_path, section, change, message):
    v = tiny_model_store.verified("tiny")
    card = v.card.model_dump(exclude={"version", "sha256"})
    card[section] = {**card[section], **change}
    store = ModelStore(tmp_path / "s")
    with pytest.raises(ValidationError, match=message):
        store.publish(card, v.weights_path)
    assert store.list() == []


def test_a_preset_names_only_what_it_changes_and_is_checked():
    from pydantic import ValidationError

    from model_store.card import SamplingSection

    card = SamplingSection(
        sampler="euler-a", steps=4, samples=1, presets={"fast": {"steps": 2, "note": "x"}}
    )
    fast = card.preset("fast")
    assert (fast.sampler, fast.steps, fast.samples) == ("euler-a", 2, 1)
    assert card.preset("default") is card and card.preset(None) is card
    with pytest.raises(ValidationError):
        SamplingSection(presets={"turbo": {"steps": 1}})  # only named presets
    with pytest.raises(ValidationError):
        SamplingSection(presets={"fast": {"steps": 0}})
