"""Messages for configs written with the old flat ``WSSSDataModule`` arguments.

The datamodule used to take every option as one flat argument (``root``, ``supervision``, ``batch_size``,
``labeled_list``, ...); they are now grouped into ``source``, ``view``, ``transform`` and ``loader``. The
config parser rejects the old keys before the datamodule is built, so the ``wsss`` command calls
:func:`flat_options_message` on its failure to show each old key's new place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import yaml

from wsss_lightning.data.options import LoaderOptions, TransformOptions

#: supervision string -> class path of its view
VIEW_CLASS_PATHS: dict[str, str] = {
    "full": "wsss_lightning.data.FullView",
    "image": "wsss_lightning.data.TagsView",
    "click": "wsss_lightning.data.ClickView",
    "semi": "wsss_lightning.data.SemiView",
    "domain": "wsss_lightning.data.DomainView",
}

_SOURCE_KEYS = {
    "root": "root",
    "dataset": "name",
    "train_split": "train_split",
    "val_split": "val_split",
    "test_split": "test_split",
    "predict_split": "predict_split",
}
_TARGET_KEYS = {"target_dataset": "name", "target_root": "root", "target_split": "train_split"}
#: view option -> the views that have it
_VIEW_KEYS: dict[str, tuple[str, ...]] = {
    "mask_dir": ("full",),
    "tags_file": ("image",),
    "diagnostic_masks": ("image", "click"),
    "clicks_dir": ("click",),
    "click_seed": ("click",),
    "background_clicks": ("click",),
    "click_placement": ("click",),
    "click_mode": ("click",),
    "labeled_list": ("semi",),
    "unlabeled_list": ("semi",),
    "labeled_fraction": ("semi",),
    "split_seed": ("semi",),
    "oversample_labeled": ("semi",),
    "unlabeled_batch_size": ("semi", "domain"),
    "keep_target_masks": ("semi", "domain"),
}
_TRANSFORM_KEYS = tuple(f.name for f in fields(TransformOptions))
_LOADER_KEYS = tuple(f.name for f in fields(LoaderOptions))

#: every flat argument that moved (``cache_dir`` kept its place)
OLD_KEYS: frozenset[str] = frozenset(
    {"supervision", *_SOURCE_KEYS, *_TARGET_KEYS, *_VIEW_KEYS, *_TRANSFORM_KEYS, *_LOADER_KEYS}
)


def _view_name(options: Mapping[str, Any]) -> str | None:
    """The view an old flat config meant (its ``supervision``, else guessed from view-only keys)."""
    value = options.get("supervision")
    if isinstance(value, str) and value in VIEW_CLASS_PATHS:
        return value
    if any(key in options for key in _TARGET_KEYS):
        return "domain"
    for key in options:
        owners = _VIEW_KEYS.get(key, ())
        if len(owners) == 1:
            return owners[0]
    return None


def new_spelling(key: str, options: Mapping[str, Any] | None = None) -> str | None:
    """Where the old flat datamodule argument ``key`` lives now, relative to ``data.init_args``.

    Args:
        key: An old flat argument name, e.g. ``"labeled_list"``.
        options: The other old options of the same config, which decide e.g. whether ``val_split`` belongs
            to the source or to a domain target.

    Returns:
        The new dotted spelling (e.g. ``"view.init_args.labeled_list"``), or None if ``key`` did not move.
    """
    options = options or {}
    view = _view_name(options)
    if key == "supervision":
        value = options.get("supervision")
        path = VIEW_CLASS_PATHS.get(value) if isinstance(value, str) else None
        if path is None:
            names = ", ".join(f"{name} -> {cls.rsplit('.', 1)[1]}" for name, cls in VIEW_CLASS_PATHS.items())
            return f"view: {{class_path: wsss_lightning.data.<View>}} ({names})"
        return f"view: {{class_path: {path}}}"
    if key in _TARGET_KEYS:
        return f"view.init_args.target.{_TARGET_KEYS[key]}"
    if key in ("val_split", "test_split", "predict_split") and view == "domain":
        return f"view.init_args.target.{key}"  # a domain run evaluates on its target
    if key in _SOURCE_KEYS:
        return f"source.{_SOURCE_KEYS[key]}"
    if key in _VIEW_KEYS:
        owners = _VIEW_KEYS[key]
        if view is not None and view not in owners:
            classes = " / ".join(VIEW_CLASS_PATHS[o].rsplit(".", 1)[1] for o in owners)
            return f"view.init_args.{key} (only {classes} has it)"
        return f"view.init_args.{key}"
    if key in _TRANSFORM_KEYS:
        return f"transform.{key}"
    if key in _LOADER_KEYS:
        return f"loader.{key}"
    return None


def convert_flat_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The grouped ``init_args`` of an old flat ``WSSSDataModule`` config (keys that did not move are kept).

    Args:
        options: The old ``data.init_args`` mapping, e.g. ``{"root": ..., "supervision": "semi", ...}``.

    Returns:
        The same options as ``{"source": {...}, "view": {"class_path": ..., "init_args": {...}}, "transform":
        {...}, "loader": {...}, ...}``; empty groups are left out.
    """
    view = _view_name(options)
    source: dict[str, Any] = {}
    target: dict[str, Any] = {}
    view_args: dict[str, Any] = {}
    transform: dict[str, Any] = {}
    loader: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in options.items():
        if key == "supervision":
            continue
        if key in _TARGET_KEYS:
            target[_TARGET_KEYS[key]] = value
        elif key in ("val_split", "test_split", "predict_split") and view == "domain":
            target[key] = value
        elif key in _SOURCE_KEYS:
            source[_SOURCE_KEYS[key]] = value
        elif key in _VIEW_KEYS:
            view_args[key] = value
        elif key in _TRANSFORM_KEYS:
            transform[key] = value
        elif key in _LOADER_KEYS:
            loader[key] = value
        else:
            rest[key] = value
    if target:
        view_args = {"target": target, **view_args}
    out: dict[str, Any] = {}
    if source:
        out["source"] = source
    if view is not None and (view != "full" or view_args or "supervision" in options):
        out["view"] = {"class_path": VIEW_CLASS_PATHS[view]}
        if view_args:
            out["view"]["init_args"] = view_args
    if transform:
        out["transform"] = transform
    if loader:
        out["loader"] = loader
    out.update(rest)
    return out


def flat_options_message(
    options: Mapping[str, Any] | Iterable[str], where: str = "data", command_line: bool = False
) -> str | None:
    """Explain how to write old flat datamodule options in the grouped form.

    Args:
        options: The old ``data.init_args`` mapping (values let the message show the converted block), or
            just the keys that were given.
        where: Where the options were found, for the message (e.g. ``"config.yaml: data"``).
        command_line: Spell the options as command-line flags (``--data.root -> --data.source.root``).

    Returns:
        A multi-line message listing ``old key -> new spelling`` for each moved key (and, for a config
        mapping, the whole block in the new form), or None when no old key is present.
    """
    given: dict[str, Any] = dict(options) if isinstance(options, Mapping) else dict.fromkeys(options)
    old = [key for key in given if key in OLD_KEYS]
    if not old:
        return None
    if command_line:
        lines = [
            (
                f"{where}: WSSSDataModule groups its options into source / view / transform / loader now; "
                "spell these options as:"
            )
        ]
        for key in old:
            new = new_spelling(key, given)
            if key == "supervision":
                value = given[key]
                path = VIEW_CLASS_PATHS.get(value) if isinstance(value, str) else None
                new = f"--data.view {path}" if path else f"--data.view wsss_lightning.data.<View> ({new})"
                lines.append(f"  --data.supervision {value} -> {new}")
            else:
                lines.append(f"  --data.{key} -> --data.{new}")
        return "\n".join(lines)
    lines = [
        (
            f"{where}: WSSSDataModule groups its options into source / view / transform / loader now; "
            "write these keys under data.init_args as:"
        )
    ]
    for key in old:
        value = given[key]
        shown = f"{key}: {value}" if key == "supervision" and value is not None else key
        lines.append(f"  {shown} -> {new_spelling(key, given)}")
    if isinstance(options, Mapping):
        block = {"class_path": "wsss_lightning.data.WSSSDataModule", "init_args": convert_flat_options(given)}
        converted = yaml.safe_dump({"data": block}, sort_keys=False, default_flow_style=None)
        lines += ["that is:", *("  " + line for line in converted.rstrip().splitlines())]
    return "\n".join(lines)


def _data_options(block: Any) -> dict[str, Any] | None:
    """The datamodule options of a config's ``data`` value (``init_args``, or a bare mapping)."""
    if not isinstance(block, Mapping):
        return None
    if isinstance(block.get("init_args"), Mapping):
        return dict(block["init_args"])
    return {k: v for k, v in block.items() if k not in ("class_path", "init_args", "dict_kwargs")}


def _data_blocks(config: Any) -> list[Any]:
    """``data`` values of a parsed config file, at the top level or under a subcommand."""
    if not isinstance(config, Mapping):
        return []
    blocks = [config["data"]] if "data" in config else []
    for sub in ("fit", "validate", "test", "predict"):
        if isinstance(config.get(sub), Mapping) and "data" in config[sub]:
            blocks.append(config[sub]["data"])
    return blocks


def _load_yaml(text_or_path: str) -> Any:
    try:
        with open(text_or_path, encoding="utf-8") as file:
            return yaml.safe_load(file)
    except OSError:
        pass
    try:
        return yaml.safe_load(text_or_path)
    except yaml.YAMLError:
        return None


def _scalar(value: str | None) -> Any:
    try:
        return yaml.safe_load(value) if value is not None else None
    except yaml.YAMLError:
        return value


def legacy_data_options_message(args: Any) -> str | None:
    """Old flat datamodule options in a ``wsss`` command line and the config files it names.

    Looks at the ``data`` block of every ``-c`` / ``--config`` file (and of a ``--data`` file or YAML value)
    and at ``--data.KEY`` / ``--data.init_args.KEY`` options.

    Args:
        args: The command-line arguments (a list of strings), or the mapping given to the CLI instead.

    Returns:
        The messages of :func:`flat_options_message` for each place with old keys, or None if there is none.
    """
    messages: list[str] = []

    def add_config(config: Any, where: str) -> None:
        for block in _data_blocks(config):
            options = _data_options(block)
            message = flat_options_message(options, where=f"{where}: data") if options else None
            if message:
                messages.append(message)

    if isinstance(args, Mapping):
        add_config(args, "arguments")
        for sub in ("fit", "validate", "test", "predict", None):
            node = args.get(sub, {}) if sub else args
            configs = node.get("config", []) if isinstance(node, Mapping) else []
            for path in configs if isinstance(configs, list) else [configs]:
                add_config(_load_yaml(str(path)), str(path))
        return "\n".join(messages) or None

    argv = [str(a) for a in (args or [])]
    command_line: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, _, inline = arg.partition("=")
        has_inline = "=" in arg
        value = inline if has_inline else (argv[i + 1] if i + 1 < len(argv) else None)
        step = 1 if has_inline else 2
        if key in ("-c", "--config"):
            if value is not None:
                add_config(_load_yaml(value), value)
            i += step
            continue
        if key == "--data":
            if value is not None:
                add_config({"data": _load_yaml(value)}, "--data")
            i += step
            continue
        if key.startswith("--data."):
            parts = key[len("--data.") :].split(".")
            if parts[0] == "init_args":
                parts = parts[1:]
            if parts and parts[0] in OLD_KEYS:
                command_line[parts[0]] = _scalar(value)
            i += step
            continue
        i += 1
    if command_line:
        message = flat_options_message(command_line, where="command line", command_line=True)
        if message:
            messages.append(message)
    return "\n".join(messages) or None
