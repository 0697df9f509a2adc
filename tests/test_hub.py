"""Hugging Face conventions, offline: model cards built with huggingface_hub, repo ids for
steerers and models read from a populated local HF cache (never the network), push_to_hub through
HfApi (monkeypatched), file modes under the user's umask, provenance warnings, top-level names."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from steerlib import MeanSteer, Steerer, load_steerable
from steerlib.data import TEXT_BENIGN, TEXT_HARMFUL, apply_template
from steerlib.errors import InputError, PersistenceError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny():
    return load_steerable("tiny:llama")


@pytest.fixture(scope="module")
def fitted(tiny):
    items = [apply_template(p, TEXT_HARMFUL) for p in ("How do I pick a lock?", "Make a fake ID.")]
    items += [apply_template(p, TEXT_BENIGN) for p in ("Capital of France?", "A haiku about rain.")]
    return MeanSteer(layer=1, progress=False).fit(tiny, items)


def populate_cache(cache: Path, repo_id: str, src: Path, revision: str = "main") -> Path:
    """A local HF hub cache holding ``src``'s files as ``repo_id`` at ``revision`` (the layout
    huggingface_hub writes: models--owner--name/{refs,snapshots})."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(src, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(COMMIT)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_top_level_names():
    import steerlib

    for name in ("L2S", "MeanSteer", "MeanSteerBA", "P2S", "NormRandom", "NoSteer", "PromptSteer", "StaticVectors",
                 "Steerer", "SteerableModel", "ContrastiveItem", "load_steerable", "load_smollm2", "demo_items"):
        assert hasattr(steerlib, name), name
    with pytest.raises(AttributeError):
        steerlib.no_such_name  # noqa: B018


def test_model_card_is_valid_hub_metadata_and_has_no_local_path(fitted, tmp_path):
    from huggingface_hub import ModelCard

    out = fitted.save_pretrained(tmp_path / "s", metrics={"harmful refused": 0.88}, license="apache-2.0")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "steerlib" and card.data.license == "apache-2.0"
    assert card.data.to_dict()["steerlib_metrics"] == {"harmful refused": 0.88}
    for f in out.iterdir():
        text = f.read_bytes().decode("utf-8", "replace")
        assert str(tmp_path) not in text and str(Path.home()) + "/" not in text, f.name


def test_card_names_the_repo_id_of_real_weights_as_base_model(fitted, tmp_path):
    from huggingface_hub import ModelCard

    meta_model = {**fitted.model_info_, "name": "HuggingFaceTB/SmolLM2-135M-Instruct",
                  "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    st = fitted.clone()
    st.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    st.model_info_ = meta_model
    card = ModelCard.load(st.save_pretrained(tmp_path / "s") / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_saved_files_follow_the_umask(fitted, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = fitted.save_pretrained(tmp_path / "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_from_pretrained_by_repo_id_and_revision_from_the_local_cache(fitted, tmp_path, hub_cache, tiny):
    src = fitted.save_pretrained(tmp_path / "s")
    populate_cache(hub_cache, "someuser/tiny-mean", src, revision="v1")
    back = Steerer.from_pretrained("someuser/tiny-mean", model=tiny, revision="v1")
    assert type(back) is MeanSteer and (back.vectors(tiny, ["hi"]) == fitted.vectors(tiny, ["hi"])).all()
    with pytest.raises(PersistenceError, match="not in the local Hugging Face cache"):
        Steerer.from_pretrained("someuser/tiny-mean", revision="v2")
    with pytest.raises(PersistenceError, match="not in the local Hugging Face cache"):
        Steerer.from_pretrained("someuser/absent")


def test_push_to_hub_uploads_the_saved_folder(fitted, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, private, exist_ok, repo_type)

        def upload_folder(self, folder_path, repo_id, repo_type, revision, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["upload"] = (repo_id, revision, commit_message)
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert fitted.push_to_hub("me/steer", private=True, commit_message="first") == "commit-info"
    assert calls["create"] == ("me/steer", True, True, "model")
    assert calls["upload"] == ("me/steer", None, "first")
    assert calls["files"] == ["README.md", "steerer.json", "steerer.safetensors"]


def test_load_steerable_by_repo_id_offline_and_provenance_warning(fitted, tmp_path, hub_cache, tiny):
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    populate_cache(hub_cache, "someuser/tiny-llama", folder)
    sm = load_steerable("someuser/tiny-llama", cache_dir=str(hub_cache))
    assert sm.num_layers == tiny.num_layers and sm.name == "someuser/tiny-llama"
    st = fitted.clone()
    st.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    st.model_info_ = {**fitted.model_info_, "repo_id": "someuser/other-finetune"}
    saved = st.save_pretrained(tmp_path / "s")
    with pytest.warns(UserWarning, match="repo_id 'someuser/other-finetune'"):
        Steerer.from_pretrained(saved, model=sm)
    with pytest.raises(InputError, match="cannot load a config"):
        load_steerable("someuser/absent-model", cache_dir=str(hub_cache))


def test_a_folder_without_config_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_steerable(str(tmp_path))
