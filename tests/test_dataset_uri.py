"""Datasets at a URI (s3://bucket/prefix) on a real S3 API (moto's server, tests/s3_server.py; nothing is mocked):
`binsweep data ... --out s3://...` builds in a staging folder and publishes with the manifest last, readers stream from
the bucket and give what they give on a local copy, fingerprints agree, an interrupted upload is refused until a
rerun completes it, a sweep file's `dataset:` may be a URI, and a data.root that a node cannot see says what to do on a
cluster. The slow test runs a real sweep with both its dataset and its Ray storage on S3.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sweep_platform import model_store, paths, tracking
from sweep_platform.cli import app
from sweep_platform.sweep import DatasetMissingError, ensure_dataset
from sweep_platform.sweep_file import load_sweep
from sweep_platform.training import DatasetNotFoundError, dataset_fingerprint, resolve_data_root
from trainables import datastore
from trainables.bast.config import BASTConfig
from trainables.binaural.data import BinauralReader, load_manifest as load_binaural, read_clips
from trainables.localization import shards
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.localization.onthefly import OnTheFlyRenderer
from trainables.localization.reader import ShardReader
from trainables.registry import get_trainable

runner = CliRunner()
BUCKET = "binsweep-test"
# A few seconds each: 8 sounds x 6 azimuths, one room
LOC_ARGS = ["--generated-sounds", "8", "--azimuth-step", "60", "--environments", "anechoic", "--test-fraction", "0.25",
            "--shard-rows", "20", "--seed", "3"]
LOC_BUILD = {"generated_sounds": 8, "azimuths": list(range(0, 360, 60)), "environments": ["anechoic"],
             "test_fraction": 0.25, "shard_rows": 20, "seed": 3}
BIN_ARGS = ["--scenes", "6", "--image-size", "32", "64", "--max-sources", "1", "--seed", "3"]  # test_binaural_data's CLI


def uri(tmp_path: Path, name: str) -> str:
    return f"s3://{BUCKET}/{tmp_path.name}/{name}"


def data_cli(*args: str) -> str:
    res = runner.invoke(app, ["data", *args])
    assert res.exit_code == 0, res.output
    return res.output


def batches(reader) -> list[dict[str, torch.Tensor]]:
    return [dict(b) for b in reader]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# ------------------------------------------------------------------------------------------------ localization


def test_localization_cli_publishes_to_s3_and_readers_stream_it(s3, tmp_path):
    where = uri(tmp_path, "loc")
    out = data_cli("localization", "--out", where, *LOC_ARGS)
    assert where in out.replace("\n", "")
    keys = s3.keys(prefix=f"{tmp_path.name}/loc/")
    prefix = f"{tmp_path.name}/loc/"
    assert f"{prefix}manifest.json" in keys and f"{prefix}build.json" in keys
    assert f"{prefix}dry/sounds.parquet" in keys and f"{prefix}dry/brirs.npz" in keys
    data_cli("localization", "--out", str(tmp_path / "local"), *LOC_ARGS)
    local = shards.load_manifest(tmp_path / "local")
    remote = shards.load_manifest(where)
    assert remote.root == where and isinstance(remote.root, str)
    assert {f"{prefix}{e['file']}" for e in remote.data["shards"]} <= set(keys)
    assert remote.fingerprint == local.fingerprint  # the same bytes, wherever they are
    assert remote.shards("train")[0] == f"{where}/shards/train-00000.parquet"
    assert not datastore.staging_dir(where).exists()  # published: the staging copy is gone

    for kw in ({"split": "train", "batch_size": 8, "seed": 5},
               {"split": "train", "batch_size": 4, "rank": 1, "world_size": 2},
               {"split": "test", "batch_size": 64, "shuffle": False, "environments": ["anechoic"]}):
        assert_same_batches(batches(ShardReader(where, **kw)), batches(ShardReader(tmp_path / "local", **kw)))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = OnTheFlyRenderer(where).batch(4, g1)
    b = OnTheFlyRenderer(tmp_path / "local").batch(4, g2)
    assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["azimuth"], b["azimuth"])

    # fingerprints where the platform reads them: the trial config's data.root, promotion's check
    cfg = BASTConfig.model_validate({"data": {"root": where}})
    assert dataset_fingerprint(cfg) == local.fingerprint
    assert model_store.manifest_fingerprint(model_store.data_root({"data.root": where})) == local.fingerprint

    # publishing again is idempotent; another build at the same URI is refused
    assert where in data_cli("localization", "--out", where, *LOC_ARGS)
    assert s3.keys(prefix=prefix) == keys
    res = runner.invoke(app, ["data", "localization", "--out", where, *LOC_ARGS[:-1], "4"])
    assert res.exit_code == 2 and "holds a different build" in res.output, res.output


def test_missing_manifest_at_a_uri_names_the_uri_and_the_fix(s3, tmp_path):
    where = uri(tmp_path, "nothing")
    with pytest.raises(FileNotFoundError) as err:
        ShardReader(where, "train", 8)
    text = str(err.value)
    assert f"{where}/manifest.json not found" in text and f"binsweep data localization --out {where}" in text
    with pytest.raises(FileNotFoundError, match=f"binsweep data binaural --out {where}"):
        load_binaural(where)


class Interrupted(Exception):
    pass


def test_an_upload_interrupted_before_the_manifest_is_refused_until_a_rerun_completes_it(s3, tmp_path):
    where = uri(tmp_path, "cut")
    prefix = f"{tmp_path.name}/cut/"
    cfg = LocalizationBuildConfig(**LOC_BUILD)

    def cut_before_manifest(done: int, total: int, rel: str) -> None:
        if done == total - 1:  # everything but manifest.json is up
            raise Interrupted(rel)

    with pytest.raises(Interrupted):
        datastore.build_and_publish(where, lambda folder: build(cfg, folder), publish_progress=cut_before_manifest)
    keys = s3.keys(prefix=prefix)
    assert any(k.startswith(f"{prefix}shards/") for k in keys) and f"{prefix}manifest.json" not in keys
    with pytest.raises(FileNotFoundError, match="upload was interrupted"):
        ShardReader(where, "train", 8)
    staged = datastore.staging_dir(where)
    assert (staged / "manifest.json").is_file()  # the local build was complete: a rerun only uploads

    out = data_cli("localization", "--out", where, *LOC_ARGS)
    assert where in out.replace("\n", "")
    assert f"{prefix}manifest.json" in s3.keys(prefix=prefix) and not staged.exists()
    assert shards.load_manifest(where).fingerprint == build(cfg, tmp_path / "local").fingerprint
    assert len(list(ShardReader(where, "train", 8))) > 0


def test_publish_refuses_a_uri_that_holds_another_dataset(s3, tmp_path):
    a = build(LocalizationBuildConfig(**LOC_BUILD), tmp_path / "a")
    b = build(LocalizationBuildConfig(**{**LOC_BUILD, "seed": 4}), tmp_path / "b")
    where = uri(tmp_path, "one")
    datastore.publish(a.root, where)
    datastore.publish(a.root, where)  # again: nothing to do
    with pytest.raises(ValueError, match="different build|another dataset"):
        datastore.publish(b.root, where)
    assert shards.load_manifest(where).fingerprint == a.fingerprint
    # any pyarrow URI: a file:// one is written file by file beside its final name, then renamed
    there = f"file://{tmp_path}/published"
    datastore.publish(a.root, there)
    assert shards.load_manifest(there).fingerprint == a.fingerprint
    assert not list((tmp_path / "published").rglob("*.tmp"))
    assert_same_batches(batches(ShardReader(there, "train", 8)), batches(ShardReader(a.root, "train", 8)))


# ------------------------------------------------------------------------------------------------ binaural


def test_binaural_cli_publishes_to_s3_and_the_reader_streams_it(s3, tmp_path):
    where = uri(tmp_path, "bin")
    data_cli("binaural", "--out", where, *BIN_ARGS)
    data_cli("binaural", "--out", str(tmp_path / "local"), *BIN_ARGS)
    remote, local = load_binaural(where), load_binaural(tmp_path / "local")
    keys = s3.keys(prefix=f"{tmp_path.name}/bin/")
    assert f"{tmp_path.name}/bin/manifest.json" in keys
    assert all(f"{tmp_path.name}/bin/{e['file']}" in keys for e in remote.data["shards"])
    assert remote.fingerprint == local.fingerprint and remote.root == where
    kw = dict(window=10080, shuffle=True, random_crop=True, seed=0, depth=True)
    assert_same_batches(batches(BinauralReader(where, "train", 2, **kw)),
                        batches(BinauralReader(tmp_path / "local", "train", 2, **kw)))
    (r,), (l,) = read_clips(where, "test"), read_clips(tmp_path / "local", "test")
    assert r.clip_id == l.clip_id and np.array_equal(r.wave, l.wave) and np.array_equal(r.frames, l.frames)


# ------------------------------------------------------------------------------------------------ the platform


def sweep_data(dataset: str, **over) -> dict:
    data = {
        "name": "uri", "trainable": "bast", "dataset": dataset, "dataset_build": LOC_BUILD, "metric": "val_ad_deg",
        "scheduler": {"type": "none"}, "concurrency": 2, "sampler": {"type": "grid"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "base": {"model": {"preset": "bast_tiny", "embed_dim": 32, "mlp_dim": 64, "layers_left": 1,
                           "layers_right": 1, "layers_center": 1},
                 "train": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3, "precision": "fp32"}},
        "space": {"model.integration": {"choice": ["sub", "add"]}},
    }
    data.update(over)
    return data


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_ensure_dataset_builds_a_sweep_files_dataset_into_a_uri(s3, tmp_path):
    where = uri(tmp_path, "swept")
    spec = load_sweep(write(tmp_path, "uri.yaml", sweep_data(where)))
    said = []
    assert ensure_dataset(spec, said.append) == where
    assert said and "publishing" in said[0]
    assert f"{tmp_path.name}/swept/manifest.json" in s3.keys(prefix=f"{tmp_path.name}/swept/")
    fingerprint = shards.load_manifest(where).fingerprint
    assert fingerprint == build(LocalizationBuildConfig(**LOC_BUILD), tmp_path / "local").fingerprint
    assert ensure_dataset(spec) == where  # there now: used as it is

    # without dataset_build: the file, the field and the command that publishes it there
    missing = uri(tmp_path, "absent")
    data = sweep_data(missing)
    data.pop("dataset_build")
    path = write(tmp_path, "nobuild.yaml", data)
    with pytest.raises(DatasetMissingError) as err:
        ensure_dataset(load_sweep(path))
    text = str(err.value)
    assert str(path) in text and f"dataset {missing}" in text
    assert f"binsweep data localization --out {missing}" in text


def test_resolve_data_root_keeps_a_uri_and_explains_a_missing_local_dataset(s3, tmp_path):
    spec = get_trainable("bast")
    where = uri(tmp_path, "ok")
    build(LocalizationBuildConfig(**LOC_BUILD), where)
    cfg = resolve_data_root(spec, BASTConfig.model_validate({"data": {"root": where}}))
    assert cfg.data.root == where

    gone = uri(tmp_path, "gone")
    with pytest.raises(DatasetNotFoundError) as err:
        resolve_data_root(spec, BASTConfig.model_validate({"data": {"root": gone}}))
    assert gone in str(err.value) and f"--out {gone}" in str(err.value)

    with pytest.raises(DatasetNotFoundError) as err:
        resolve_data_root(spec, BASTConfig.model_validate({"data": {"root": "data/not_on_this_node"}}))
    text = " ".join(str(err.value).split())
    assert socket.gethostname() in text and f"BINSWEEP_HOME={paths.home()}" in text
    assert str(paths.home() / "data" / "not_on_this_node") in text
    assert "each node has its own disk" in text
    assert "binsweep data localization --out s3://bucket/prefix" in text and "dataset:" in text
    assert "binsweep data localization --out data/not_on_this_node" in text  # one machine: as before


# ------------------------------------------------------------------------------------------------ a real sweep


@pytest.mark.slow
def test_a_sweep_with_its_dataset_and_its_ray_storage_on_s3(s3, tmp_path, monkeypatch):
    import ray

    storage = f"s3://{BUCKET}/{tmp_path.name}/ray"
    monkeypatch.setenv("BINSWEEP_RAY_STORAGE", storage)
    where = uri(tmp_path, "loc")
    name = f"s3-{tmp_path.name}"[:60]
    # Trials read S3 in Ray's worker processes, which take their environment (the S3 server's address) from the
    # cluster's start: a cluster started earlier in this session without it is replaced, and this one is not kept.
    if ray.is_initialized():
        ray.shutdown()
    try:
        res = runner.invoke(app, ["sweep", str(write(tmp_path, "s3.yaml", sweep_data(where))), "--name", name])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output

    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    (parent,) = c.search_runs(ids, filter_string=f"tags.`binsweep.sweep_id` = '{name}' and "
                                                 f"tags.`binsweep.role` = 'sweep'")
    assert parent.data.tags["binsweep.dataset_fingerprint"] == shards.load_manifest(where).fingerprint
    trials = c.search_runs(ids, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 2
    keys = s3.keys(prefix=f"{tmp_path.name}/ray/")
    for run in trials:
        assert run.data.tags["binsweep.state"] == "completed", run.data.tags
        assert run.data.params["data.root"] == where
        assert run.data.tags["binsweep.dataset_fingerprint"] == parent.data.tags["binsweep.dataset_fingerprint"]
        assert "test_ad_deg" in run.data.metrics
        tid = run.data.tags["binsweep.trial_id"]
        mine = [k for k in keys if k.startswith(f"{tmp_path.name}/ray/{name}-trial-{tid}/checkpoint_")]
        assert any(k.endswith("/config.json") for k in mine), keys
        assert f"{BUCKET}/{tmp_path.name}/ray/{name}-trial-{tid}/checkpoint_" in run.data.tags["binsweep.best_checkpoint"]
    assert any(k.startswith(f"{tmp_path.name}/ray/{name}/") for k in keys)  # the Tune experiment itself
    local = paths.runs_dir() / "ray"
    assert not (local.exists() and any(local.glob(f"{name}*"))), sorted(p.name for p in local.iterdir())


def test_nicnn_import_publishes_to_s3(s3, tmp_path):
    from test_nicnn_import import write_dataset

    write_dataset(tmp_path / "src", train_sounds=2, azimuths=(0, 90))
    where = uri(tmp_path, "nicnn")
    out = data_cli("import-nicnn", str(tmp_path / "src"), "--out", where)
    data_cli("import-nicnn", str(tmp_path / "src"), "--out", str(tmp_path / "local"))
    assert where in out.replace("\n", "")
    remote, local = shards.load_manifest(where), shards.load_manifest(tmp_path / "local")
    assert remote.fingerprint == local.fingerprint
    assert f"into {where}" in datastore.read_text(f"{where}/import_report.txt")
    assert not datastore.staging_dir(where).exists()


def test_a_shared_data_root_gives_relative_datasets_one_place_on_every_node(monkeypatch, tmp_path):
    """BINSWEEP_DATA_ROOT (cluster/aws-gpu.yaml sets it to the bucket): the shipped sweep files' `dataset: data/loc`
    names the same object-store prefix on the head and on every GPU node; URIs and absolute paths are untouched."""
    from trainables import datastore

    monkeypatch.setenv("BINSWEEP_DATA_ROOT", "s3://bucket/binsweep/")
    assert datastore.normalize("data/loc") == "s3://bucket/binsweep/data/loc"
    assert datastore.normalize("s3://other/x/") == "s3://other/x"
    assert datastore.normalize(str(tmp_path / "abs")) == tmp_path / "abs"
    monkeypatch.setenv("BINSWEEP_DATA_ROOT", str(tmp_path / "shared"))
    assert datastore.normalize("data/loc") == tmp_path / "shared" / "data" / "loc"
    monkeypatch.delenv("BINSWEEP_DATA_ROOT")
    monkeypatch.setenv("BINSWEEP_HOME", str(tmp_path / "home"))
    assert datastore.normalize("data/loc") == tmp_path / "home" / "data" / "loc"
