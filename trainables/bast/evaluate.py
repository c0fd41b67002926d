"""Evaluate a localizer (BAST, cnn_loc) on a split of a localization dataset: the BAST paper's analyses as numbers,
tables and plots.

- `predict` streams a split through the front end and the model (eval mode, no gradients) and keeps, per sample, the
  prediction, the true azimuth, the environment and the angular error.
- `evaluate` turns those into the metrics the platform logs (`{prefix}_ad_deg`, `{prefix}_mse` (eq. 2),
  `{prefix}_mse_ref` (eq. 2 / 2, the reference code's scale), `{prefix}_front_back_rate`, and the same per
  environment as `{prefix}_ad_deg.{env}`, and per room family as `{prefix}_ad_deg.family-{family}` when the manifest
  lists rooms), the per-azimuth and per-environment breakdowns, the left/right hemifield tests (Figs. 3–4) and, for a
  model trained on a single environment, its row of Table 3 (cross-environment AD).
  With `out_dir` it writes the plots (Fig. 2 polar AD, hemifield boxes, prediction scatter and, for a model with
  attention maps, the attention rollout of Fig. 6), `per_azimuth.csv`, `per_environment.csv`, `metrics.json` and
  `cross_environment.md`.
- `cross_environment_table` combines the Table 3 rows of several runs into one markdown table.

The split is always evaluated on every environment of the dataset, whatever the model was trained on: that is how
Table 3's cross-environment numbers come out (train on anechoic, test on anechoic and reverberant).
Azimuths are degrees counter-clockwise from the front (90 = left). Notation: N samples.
"""

from __future__ import annotations

import csv
import fnmatch
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.audio import BinauralFrontEnd
from trainables.bast import metrics
from trainables.bast.metrics import GroupStats, HemifieldTest
from trainables.localization import shards
from trainables.localization.dataset_fit import check_input_fits, room_families
from trainables.localization.reader import ShardReader
from trainables.loop import unwrap

ROLLOUT_AZIMUTH = 90  # Fig. 6 shows a source on the left


@dataclass
class Predictions:
    """One row per sample of the split, in the dataset's (unshuffled) order."""

    pred: np.ndarray  # [N, 2] predicted (x, y)
    azimuth_deg: np.ndarray  # [N] int true azimuth
    environment: np.ndarray  # [N] str environment names
    error_deg: np.ndarray  # [N] angular error per sample (metrics.angular_error_deg)

    @property
    def target(self) -> np.ndarray:
        """[N, 2] true (cos az, sin az)."""
        return azimuth_to_xy(self.azimuth_deg)

    def __len__(self) -> int:
        return len(self.pred)


def azimuth_to_xy(azimuth_deg) -> np.ndarray:
    """[N] degrees -> [N, 2] (cos az, sin az) in float64 (the BAST target)."""
    rad = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=-1)


@torch.no_grad()
def predict(model: torch.nn.Module, root, split: str = "test", *, device="cpu", batch_size: int = 64,
            environments=None) -> Predictions:
    """Run `model` over every row of `split` (optionally only `environments`) -> Predictions.

    The model must already be on `device`; it runs in eval mode and is put back in its previous mode afterwards.
    Non-finite predictions raise a ValueError naming the split and how many rows are affected.
    """
    reader = ShardReader(root, split, batch_size=batch_size, shuffle=False, environments=environments)
    front_end = BinauralFrontEnd(sample_rate=reader.manifest.sample_rate).to(device)
    names = np.array(reader.environments)
    preds, azimuths, envs = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in reader:
            spec = front_end(batch["wave"].to(device))  # [B, 2, F, T]
            out = model(spec)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape != (len(spec), 2):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the model must return [B, 2] (x, y) predictions, got {got} for a batch of "
                                 f"{len(spec)}")
            preds.append(out.detach().float().cpu().numpy())
            azimuths.append(batch["azimuth"].numpy())
            envs.append(names[batch["environment"].numpy()])
    finally:
        model.train(was_training)

    pred = np.concatenate(preds).astype(np.float64)
    bad = ~np.isfinite(pred).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(pred)} predictions on the {split!r} split are NaN or infinite "
                         f"(rows {np.flatnonzero(bad)[:10].tolist()}{' ...' if bad.sum() > 10 else ''})")
    azimuth = np.concatenate(azimuths).astype(int)
    return Predictions(pred=pred, azimuth_deg=azimuth, environment=np.concatenate(envs).astype(str),
                       error_deg=metrics.angular_error_deg(pred, azimuth_to_xy(azimuth)))


@dataclass
class Evaluation:
    """Everything `evaluate` found, plus the files it wrote."""

    metrics: dict[str, float]  # {prefix}_{metric}, {prefix}_{metric}.{env}, {prefix}_{metric}.family-{family}
    per_azimuth: list[GroupStats]  # all environments pooled
    per_environment: list[GroupStats]  # one per environment value: a room of a randomised-room dataset
    hemifield: list[HemifieldTest] | None  # None when the split has fewer than 2 mirrored azimuth pairs
    cross_environment: dict[str, dict[str, float]] | None  # {train_env: {test_env: AD}}, single-environment runs
    files: dict[str, Path] = field(default_factory=dict)
    split: str = "test"
    prefix: str = "test"
    n: int = 0
    predictions: Predictions | None = None  # per-sample errors, for paired tests between two models
    per_family: list[GroupStats] = field(default_factory=list)  # room families, when the manifest lists rooms
    families: dict[str, str] = field(default_factory=dict)  # room -> family

    def to_dict(self) -> dict:
        """JSON-ready: what `metrics.json` holds."""
        return {
            "split": self.split,
            "n": self.n,
            "metrics": self.metrics,
            "per_environment": [_stats_dict(s) for s in self.per_environment],
            "per_family": [_stats_dict(s) for s in self.per_family],
            "per_azimuth": [_stats_dict(s) for s in self.per_azimuth],
            "hemifield": None if self.hemifield is None else [t.to_dict() for t in self.hemifield],
            "cross_environment": self.cross_environment,
        }

    def table(self) -> str:
        """A plain-text summary: overall, per environment, hemifield tests and the cross-environment row."""
        lines = [f"{self.split} split: {self.n} samples"]
        head = f"{self.prefix}_" if self.prefix else ""
        fb = self.metrics.get(f"{head}front_back_rate")
        rows = [("all", self.n, self.metrics[f"{head}ad_deg"], self.metrics[f"{head}mse"], fb)]
        rows += [(str(s.group), s.n, s.ad_deg, s.mse, s.front_back_rate) for s in self.per_environment]
        rows += [(f"family {s.group}", s.n, s.ad_deg, s.mse, s.front_back_rate) for s in self.per_family]
        width = max(len("environment"), *(len(r[0]) for r in rows))
        lines.append(f"{'environment':<{width}}  {'n':>6}  {'AD (°)':>9}  {'MSE':>9}  {'MSE ref':>9}  {'F/B':>7}")
        lines += [f"{name:<{width}}  {n:>6}  {ad:>9.3f}  {mse:>9.4f}  {mse / 2:>9.4f}  "
                  f"{'–' if fb is None else f'{fb:.1%}':>7}" for name, n, ad, mse, fb in rows]
        lines.append("MSE = eq. 2, mean squared distance; MSE ref = eq. 2 / 2, the reference code's nn.MSELoss; "
                     "F/B = front/back confusion rate (targets off the interaural axis)")
        lines.append("")
        if self.hemifield is None:
            lines.append("hemifield tests: none (fewer than 2 mirrored azimuth pairs)")
        else:
            lines.append("hemifield tests (left vs right, paired t-test, Benjamini–Hochberg):")
            env_w = max(len("environment"), *(len(t.environment) for t in self.hemifield))
            lines.append(f"{'environment':<{env_w}}  {'metric':<6}  {'pairs':>5}  {'left':>9}  {'right':>9}  "
                         f"{'t':>7}  {'p':>8}  {'p_FDR':>8}")
            for t in self.hemifield:
                lines.append(f"{t.environment:<{env_w}}  {t.metric:<6}  {t.n_pairs:>5}  {t.left_mean:>9.4g}  "
                             f"{t.right_mean:>9.4g}  {t.t:>7.3f}  {t.p:>8.3g}  {t.p_fdr:>8.3g}"
                             f"{'  *' if t.significant else ''}")
        if self.cross_environment is not None:
            lines += ["", "cross-environment AD (°), Table 3:", cross_environment_table(self.cross_environment)]
        return "\n".join(lines)


def _stats_dict(s: GroupStats) -> dict:
    return {"group": s.group, "n": s.n, "ad_deg": s.ad_deg, "mse": s.mse, "mse_ref": s.mse_ref,
            "front_back_rate": s.front_back_rate}


def _group_metrics(head: str, suffix: str, s: GroupStats) -> dict[str, float]:
    """One group's metrics, keyed `{head}{metric}{suffix}`; the confusion rate only where it is defined."""
    out = {f"{head}ad_deg{suffix}": s.ad_deg, f"{head}mse{suffix}": s.mse, f"{head}mse_ref{suffix}": s.mse_ref}
    if s.front_back_rate is not None:
        out[f"{head}front_back_rate{suffix}"] = s.front_back_rate
    return out


def evaluate(model: torch.nn.Module, root, split: str = "test", *, out_dir=None, device="cpu", batch_size: int = 64,
             train_environments=None, prefix: str = "test") -> Evaluation:
    """Evaluate `model` on every environment of `split` (see the module docstring) -> Evaluation.

    `train_environments`: the environments the model was trained on; with exactly one, the result carries its
    Table 3 row. `out_dir`: where to write the plots and tables (nothing is written when None).
    """
    preds = predict(model, root, split, device=device, batch_size=batch_size)
    pred, target = preds.pred, preds.target
    head = f"{prefix}_" if prefix else ""

    values = metrics.summary(pred, target, prefix)
    values[f"{head}mse_ref"] = metrics.mse_ref(pred, target)
    fb = metrics.front_back_rate(pred, target)
    if fb is not None:
        values[f"{head}front_back_rate"] = fb
    per_environment = metrics.per_environment(pred, target, preds.environment)
    for s in per_environment:
        values.update(_group_metrics(head, f".{s.group}", s))
    # Rooms the manifest lists with a family (training / held-out rooms) also count towards their family.
    present = set(preds.environment)
    families = {env: fam for env, fam in room_families(shards.load_manifest(root)).items() if env in present}
    per_family = []
    if families:
        listed = np.isin(preds.environment, list(families))
        family_of = np.array([families.get(e, "") for e in preds.environment])
        per_family = metrics.per_group(pred[listed], target[listed], family_of[listed])
        for s in per_family:
            values.update(_group_metrics(head, f".family-{s.group}", s))
    per_azimuth = metrics.per_azimuth(pred, target, preds.azimuth_deg)

    # A split whose azimuths have fewer than 2 mirrored pairs cannot be tested at all; an environment without pairs
    # is skipped by hemifield_tests itself.
    n_pairs = len(metrics.mirrored_pairs(per_azimuth, "ad_deg")[0])
    hemifield = (metrics.hemifield_tests(pred, target, preds.azimuth_deg, preds.environment) if n_pairs >= 2
                 else None)

    if isinstance(train_environments, str):  # one name, not a list of its letters
        train_environments = [train_environments]
    train_environments = None if train_environments is None else list(train_environments)
    cross = None
    if train_environments is not None and len(train_environments) == 1:
        cross = {str(train_environments[0]): {str(s.group): s.ad_deg for s in per_environment}}

    result = Evaluation(metrics=values, per_azimuth=per_azimuth, per_environment=per_environment,
                        hemifield=hemifield, cross_environment=cross, split=split, prefix=prefix, n=len(preds),
                        predictions=preds, per_family=per_family, families=families)
    if out_dir is not None:
        result.files = _write_files(model, root, split, preds, result, Path(out_dir), device, train_environments)
    return result


def _write_files(model, root, split: str, preds: Predictions, result: Evaluation, out_dir: Path, device,
                 train_environments) -> dict[str, Path]:
    from trainables.bast import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    pred, target = preds.pred, preds.target
    files = {
        "ad_per_azimuth": plots.polar_azimuth_error(result.per_azimuth, out_dir / "ad_per_azimuth.png",
                                                    title=f"{split} AD per azimuth (all environments)"),
        "predictions": plots.prediction_scatter(pred, target, out_dir / "predictions.png"),
    }
    if result.hemifield is not None:
        files["hemifield"] = plots.hemifield_boxplot(pred, target, out_dir / "hemifield.png",
                                                     azimuth_deg=preds.azimuth_deg, environment=preds.environment)
    rollout_info = _write_rollout(model, root, split, preds, out_dir / "attention_rollout.png", device,
                                  train_environments)
    if rollout_info is not None:
        files["attention_rollout"] = rollout_info.pop("path")
    files["per_azimuth"] = _write_per_azimuth_csv(preds, out_dir / "per_azimuth.csv")
    files["per_environment"] = _write_per_environment_csv(result, out_dir / "per_environment.csv")
    if result.cross_environment is not None:
        path = out_dir / "cross_environment.md"
        path.write_text(cross_environment_table(result.cross_environment) + "\n")
        files["cross_environment"] = path
    path = out_dir / "metrics.json"
    path.write_text(json.dumps({**result.to_dict(), "rollout_sample": rollout_info}, indent=2))
    files["metrics"] = path
    return files


def _write_per_azimuth_csv(preds: Predictions, path: Path) -> Path:
    """One row per (azimuth, environment): n, mean and (population) standard deviation of AD, mean squared error
    (eq. 2), front/back confusion rate (empty on the interaural axis, where it is undefined)."""
    se = metrics.squared_error(preds.pred, preds.target)
    confused, eligible = metrics.front_back(preds.pred, preds.target)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["azimuth_deg", "environment", "n", "ad_deg_mean", "ad_deg_std", "mse_mean",
                         "front_back_rate"])
        for env in np.unique(preds.environment):
            for az in np.unique(preds.azimuth_deg[preds.environment == env]):
                mask = (preds.environment == env) & (preds.azimuth_deg == az)
                ad = preds.error_deg[mask]
                fb = f"{confused[mask].sum() / eligible[mask].sum():.6g}" if eligible[mask].any() else ""
                writer.writerow([int(az), str(env), int(mask.sum()), f"{ad.mean():.6g}", f"{ad.std():.6g}",
                                 f"{se[mask].mean():.6g}", fb])
    return path


def _write_per_environment_csv(result: Evaluation, path: Path) -> Path:
    """One row per environment (room) and per room family: kind, name, family, n, AD, MSE (eq. 2), MSE on the
    reference's scale, front/back confusion rate (empty where undefined)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "name", "family", "n", "ad_deg", "mse", "mse_ref", "front_back_rate"])
        groups = [("environment", s, result.families.get(str(s.group), "")) for s in result.per_environment]
        groups += [("family", s, str(s.group)) for s in result.per_family]
        for kind, s, family in groups:
            fb = "" if s.front_back_rate is None else f"{s.front_back_rate:.6g}"
            writer.writerow([kind, s.group, family, s.n, f"{s.ad_deg:.6g}", f"{s.mse:.6g}", f"{s.mse_ref:.6g}", fb])
    return path


def _rollout_index(preds: Predictions, train_environments) -> int:
    """The sample at 90° (or the azimuth nearest to it, circularly), preferring the environment trained on."""
    distance = np.abs((preds.azimuth_deg - ROLLOUT_AZIMUTH + 180) % 360 - 180).astype(float)
    if train_environments:
        # A sample from the training environment wins unless another is strictly closer in azimuth.
        # Names or patterns (room-*), as data.train_environments allows.
        trained = [any(fnmatch.fnmatchcase(str(e), p) for p in train_environments) for e in preds.environment]
        distance += 0.5 * ~np.asarray(trained, dtype=bool)
    return int(np.argmin(distance))


def has_attention_maps(model: torch.nn.Module) -> bool:
    """Whether `model` can hand out the attention maps the rollout needs: `forward(spec, return_attention=True)`."""
    try:
        return "return_attention" in inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):  # a forward whose signature Python cannot read offers nothing to rely on
        return False


def _write_rollout(model, root, split: str, preds: Predictions, path: Path, device, train_environments) -> dict | None:
    """Fig. 6 for one sample; None (no file) for a model without attention maps (a CNN, a stub)."""
    from trainables.bast import rollout

    if not has_attention_maps(model):
        return None
    index = _rollout_index(preds, train_environments)
    wave, sample_rate = _wave_at(root, split, index)
    front_end = BinauralFrontEnd(sample_rate=sample_rate).to(device)
    with torch.no_grad():
        spec = front_end(torch.from_numpy(wave)[None].to(device))  # [1, 2, F, T]
    maps = {k: v[0] for k, v in rollout.attention_maps(unwrap(model), spec).items()}
    rollout.save_rollout_png(spec[0].cpu(), {k: v.cpu() for k, v in maps.items()}, path)
    return {"path": path, "index": index, "azimuth_deg": int(preds.azimuth_deg[index]),
            "environment": str(preds.environment[index])}


def _wave_at(root, split: str, index: int) -> tuple[np.ndarray, int]:
    """Row `index` of the unshuffled split (the order `predict` uses) -> ([2, S] float32, sample rate)."""
    reader = ShardReader(root, split, batch_size=256, shuffle=False)
    seen = 0
    for batch in reader:
        n = len(batch["wave"])
        if index < seen + n:
            return batch["wave"][index - seen].numpy(), reader.manifest.sample_rate
        seen += n
    raise IndexError(f"{split!r} split has {seen} rows, no row {index}")


def cross_environment_table(rows: dict[str, dict[str, float]]) -> str:
    """Table 3 as markdown: one row per training environment, one column per test environment, mean AD in degrees.

    Rows and columns are sorted by name; a missing cell is shown as "–".
    """
    if not rows:
        raise ValueError("cross_environment_table needs at least one training environment")
    columns = sorted({test for row in rows.values() for test in row})
    lines = ["| train \\ test | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for train in sorted(rows):
        cells = [f"{rows[train][c]:.2f}" if c in rows[train] else "–" for c in columns]
        lines.append(f"| {train} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_spec(model: torch.nn.Module, config, split: str = "test", *, out_dir=None, device="cpu"):
    """`TrainableSpec.evaluate` of every localizer (BAST, cnn_loc): this module's analysis as an EvalResult."""
    from trainables.datastore import normalize
    from trainables.registry import EvalResult

    root = normalize(config.data.root)
    check_input_fits(shards.load_manifest(root), config)  # before streaming a split the model cannot read
    ev = evaluate(model, root, split, out_dir=out_dir, device=device,
                  train_environments=config.data.train_environments, prefix=split)
    return EvalResult(metrics=ev.metrics, files=ev.files, summary=ev.table(), per_sample_error=ev.predictions.error_deg)
