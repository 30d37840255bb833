"""Published settings chosen by the (algo, data) pair: ``conf/preset/<algo>_<data>.yaml``.

The root config's defaults list holds ``optional preset: ${algo}_${data}``, so ``algo=mamlpp
data=miniimagenet`` composes MAML++'s released mini-ImageNet setting and a pair without a file
composes the groups' own defaults. A preset file is a global override (``@package _global_``) that
also fills the ``preset`` node:

    preset:
      name: maml_omniglot
      source: Finn et al. 2017 ...
      default_row: 5w1s
      rows:                 # the published rows and the values that differ between them
        5w1s: {inner_steps: 1, inner_lr: 0.4, meta_batch_size: 32}
        20w1s: {inner_steps: 5, inner_lr: 0.1, meta_batch_size: 16}
      conv4: {filters: 64, activation: relu}   # the published backbone (read by conf/model/conv4.yaml)

Keys that differ between rows read them as ``${preset_row:meta_batch_size}``; the row is chosen by
the run's own ``data.ways`` / ``data.shots`` when the interpolation resolves, so ``data.shots=5`` on
the command line selects the 5-shot row. A row the paper did not publish falls back to
``default_row`` (the start-up line says so). Explicit overrides always win: a command-line value
replaces the interpolation itself. The backbone's published values live under ``preset.<model>``
and the model config reads them with a fallback, so choosing another backbone (``model=mlp``)
never receives keys it does not have.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from metaplus.errors import ConfigError


def row_name(data: DictConfig) -> str:
    """``5w1s`` for classification, ``5shot`` for regression (no ways)."""
    ways = data.get("ways")
    return f"{ways}w{data.shots}s" if ways else f"{data.shots}shot"


def applied_row(root: DictConfig) -> tuple[str, str]:
    """(requested row, row whose values apply): they differ when the paper has no such row."""
    preset, row = root.preset, row_name(root.data)
    if row in preset.rows:
        return row, row
    if preset.get("default_row") not in preset.rows:
        raise ConfigError(
            "preset.default_row",
            f"{preset.get('default_row')!r} is not one of the rows of preset {preset.name} ({', '.join(preset.rows)})",
        )
    return row, preset.default_row


def preset_row_value(key: str, *, _root_: DictConfig) -> Any:
    """Resolver ``${preset_row:KEY}``: KEY's value in the row matching data.ways / data.shots."""
    _, row = applied_row(_root_)
    values = _root_.preset.rows[row]
    if key not in values:
        raise ConfigError(f"preset.rows.{row}", f"has no value for {key!r} (preset {_root_.preset.name})")
    value = values[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def register() -> None:
    if not OmegaConf.has_resolver("preset_row"):
        OmegaConf.register_new_resolver("preset_row", preset_row_value)


def preset_info(cfg: DictConfig) -> dict[str, Any]:
    """What results.json records: the preset's name, source, the requested and the applied row."""
    preset = cfg.get("preset")
    if not preset:
        return {"name": None, "pair": f"{cfg.algo.name}_{cfg.data.name}"}
    requested, applied = applied_row(cfg)
    return {
        "name": preset.name,
        "source": preset.get("source"),
        "row": requested,
        "applied_row": applied,
        "published_rows": list(preset.rows),
    }


def describe(cfg: DictConfig) -> str:
    """The one start-up line naming the preset that applied (or that none did)."""
    info = preset_info(cfg)
    if info["name"] is None:
        return (
            f"preset: none for algo={cfg.algo.name} data={cfg.data.name} (no published setting of this "
            f"pair in conf/preset); the group defaults apply"
        )
    line = f"preset: {info['name']} row {info['applied_row']} ({info['source']})"
    if info["row"] != info["applied_row"]:
        line += (
            f"; no published {info['row']} row (published: {', '.join(info['published_rows'])}), "
            f"so its {info['applied_row']} values apply"
        )
    return line + "; explicit overrides win"
