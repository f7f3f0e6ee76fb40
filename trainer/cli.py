"""The trainer's commands: `synth`, `train` and `evaluate`.

Config flags are generated from the config dataclasses (ModelConfig,
TrainConfig), so every field is settable from the command line and an
unknown flag is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from trainer import artifact
from trainer.data import FORMATS, Dataset, load_dataset
from trainer.episodes import Context, make_context
from trainer.errors import ColdstartError
from trainer.evaluate import PROTOCOLS, EvalOptions
from trainer.evaluate import run as run_evaluation
from trainer.items import add_unseen_items, fit_item_side
from trainer.model import ColdStartModel, ModelConfig
from trainer.synth import write_synthetic
from trainer.text import text_vectors
from trainer.train import TrainConfig, meta_train

log = logging.getLogger(__name__)

DEFAULT_SUPPORT_SIZES = "0,1,3,5,10,20"
DEFAULT_SEEDS = [0, 1, 2]


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ColdstartError("--device cuda: no CUDA device is available (try --device auto)")
    return torch.device(name)


MAX_SUPPORT_SIZE = 10_000  # far beyond any history the protocol can split
# synth holds every interaction (80 at most per user) and every item's latent vector
MAX_SYNTH_USERS, MAX_SYNTH_ITEMS = 2_000_000, 20_000_000


def _bounded(text: str, limit: int) -> int:
    """An integer from 0 to limit: numpy's generators refuse negative seeds, and torch's
    huge ones, with a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= limit:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer from 0 to {limit}")
    return value


def seed_flag(text: str) -> int:
    """A --seed: the split and the initialisation, within what numpy and torch accept."""
    return _bounded(text, artifact.MAX_SEED)


def _distinct(text: str, limit: int) -> list[int]:
    """Comma-separated distinct integers from 0 to limit, ascending."""
    parts = text.split(",")
    if any(not part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty entry; write e.g. 0,1,3")
    values = [_bounded(part, limit) for part in parts]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: a value is given twice")
    return sorted(values)


def _seeds(text: str) -> list[int]:
    return _distinct(text, artifact.MAX_SEED)


def _support_sizes(text: str) -> list[int]:
    return _distinct(text, MAX_SUPPORT_SIZE)


def _refuse_file(path: Path) -> None:
    """Checked before the data is read: it costs nothing, and with several bad arguments
    the one-line error then names --out."""
    if path.exists() and not path.is_dir():
        raise ColdstartError(f"--out {path} is a file; give a directory")


def _out_dir(path: Path) -> None:
    """Create --out (already _refuse_file'd) once the input is checked and before the long
    work: a bad --out then fails in one line before minutes of training, and bad input
    leaves no empty directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ColdstartError(f"--out {path}: cannot create it ({error.strerror})") from None


def _add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float}.get(field.type, field.type)
            parser.add_argument(flag, type=kind, default=field.default, help="default %(default)s")


def _config(config_class: type, args: argparse.Namespace):
    try:
        return config_class(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
        )
    except ValueError as error:  # flags are the field names: --meta-steps is meta_steps
        raise ColdstartError(f"bad setting: {error}") from None


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, help="force a layout instead of detecting it")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="data set directory")
    add_format_flag(parser)
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: CUDA when present (default %(default)s)",
    )


def cmd_synth(args: argparse.Namespace) -> None:
    _refuse_file(args.out)
    if args.users < 1 or args.items < 1:
        raise ColdstartError(f"--users and --items must be >= 1, got {args.users} and {args.items}")
    if args.users > MAX_SYNTH_USERS or args.items > MAX_SYNTH_ITEMS:
        raise ColdstartError(
            f"--users is at most {MAX_SYNTH_USERS:,} and --items at most {MAX_SYNTH_ITEMS:,} "
            f"(synth holds every interaction and item in memory), got {args.users:,} and "
            f"{args.items:,}"
        )
    _out_dir(args.out)
    write_synthetic(args.out, args.users, args.items, args.seed)
    print(f"wrote a synthetic data set ({args.users} users, {args.items} items) to {args.out}")


def _settings_then_data(
    args: argparse.Namespace,
) -> tuple[ModelConfig, TrainConfig, torch.device, Dataset]:
    """What train and evaluate both read, cheapest check first: --out, the settings and the
    device are refused in one line before the data, which may take minutes to load."""
    _refuse_file(args.out)
    model_config, train_config = _config(ModelConfig, args), _config(TrainConfig, args)
    device = resolve_device(args.device)
    return model_config, train_config, device, load_dataset(args.data, args.format)


def cmd_train(args: argparse.Namespace) -> None:
    model_config, train_config, device, data = _settings_then_data(args)
    texts = data.item_text + data.unseen_item_text
    vectors, encoder = text_vectors(texts, model_config.use_item_text)
    ctx = make_context(data, args.seed, args.support_sizes, device, vectors[: data.n_items])
    _out_dir(args.out)
    log.info(
        "meta-training on %s (%d users, %d items) on %s",
        data.name,
        data.n_users,
        data.n_items,
        device,
    )
    started = time.perf_counter()
    model, summary = meta_train(ctx, model_config, train_config)
    model, items = _item_side(model, ctx, train_config, vectors[data.n_items :])
    extra = {
        "seed": args.seed,
        "support_sizes": args.support_sizes,
        "train_config": dataclasses.asdict(train_config),
        "validation": {
            k: summary[k]
            for k in ("valid_ndcg@20", "valid_ndcg@20_no_profile", "best_step", "calibration")
        },
        "items": items,
        "training": {"device": str(device), "seconds": round(time.perf_counter() - started, 1)},
    }
    described = None if encoder is None else encoder.describe()
    manifest = artifact.save(model, data, args.out, extra, described)
    print(
        json.dumps(
            {
                "model_version": manifest["model_version"],
                "out": str(args.out),
                **extra["validation"],
                "item_warm_after": items["item_step"]["warm_after"],
                "unseen_items": items["unseen_items"],
                **extra["training"],
            }
        )
    )


def _item_side(
    model: ColdStartModel, ctx: Context, config: TrainConfig, unseen_text: np.ndarray
) -> tuple[ColdStartModel, dict]:
    """The trained model with its new-item side fitted and the data's unseen items added
    (`unseen_text` their text vectors), and a summary of the fit."""
    data = ctx.data
    summary = fit_item_side(model, ctx, config)
    unseen = data.unseen_item_features
    if unseen is None:
        unseen = np.zeros((len(data.unseen_item_ids), 0), dtype=np.float32)
    features = torch.from_numpy(unseen).to(ctx.device)
    model = add_unseen_items(model, features, torch.from_numpy(unseen_text).to(ctx.device))
    summary["unseen_items"] = len(data.unseen_item_ids)
    return model, summary


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.model and args.protocol == "item-coldstart":
        raise ColdstartError(
            "--protocol item-coldstart trains its own models on each seed's warm items; "
            "drop --model"
        )
    model_config, train_config, device, data = _settings_then_data(args)
    loaded = artifact.load(args.model) if args.model else None
    seeds = args.seeds or DEFAULT_SEEDS
    if loaded is not None:
        _refuse_config_flags(args)
        _require_same_data(loaded, data)
        seeds = _artifact_seeds(loaded, args.seeds)
        model_config = loaded.model.config  # what it was trained with; mf takes its K steps
    options = EvalOptions(
        support_sizes=args.support_sizes,
        seeds=seeds,
        protocol=args.protocol,
        device=device,
        model_config=model_config,
        train_config=train_config,
    )
    _out_dir(args.out)
    run_evaluation(data, args.out, options, loaded)
    print((args.out / "results.md").read_text())


def _refuse_config_flags(args: argparse.Namespace) -> None:
    """--model is evaluated as it was trained: a model or training flag would be ignored
    without a word, and the results read as if it had applied."""
    given = [
        "--" + field.name.replace("_", "-")
        for config_class in (ModelConfig, TrainConfig)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name) != field.default
    ]
    if given:
        raise ColdstartError(f"--model is evaluated with its own settings; drop {', '.join(given)}")


def _require_same_data(loaded: artifact.Artifact, data: Dataset) -> None:
    """The model's item map, features and split only mean something on the data it saw.
    The fingerprint covers the features too: the vocabularies are compared first only to
    say which part differs."""
    manifest = loaded.manifest
    same_features = manifest["user_features"] == data.user_vocab  # dicts: any key order
    if not same_features or manifest["user_feature_brackets"] != data.user_brackets:
        raise ColdstartError("--model was trained with other user features than --data has")
    if manifest["item_feature_names"] != data.item_feature_names:
        raise ColdstartError("--model was trained with other item features than --data has")
    if manifest["dataset"].get("fingerprint") != artifact.data_fingerprint(data):
        raise ColdstartError("--model was trained on different data than --data")


def _artifact_seeds(loaded: artifact.Artifact, requested: list[int] | None) -> list[int]:
    """A trained model can only be tested on its own split: other seeds' test users are its
    training users."""
    seed = loaded.manifest["seed"]  # artifact.load has checked it is there, an int
    if requested not in (None, [seed]):
        raise ColdstartError(f"--model was trained on the split of seed {seed}; drop --seeds")
    return [seed]


def add_commands(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser("synth", help="write a synthetic data set (generic CSV layout)")
    synth.add_argument("--out", required=True, type=Path, help="directory to write")
    synth.add_argument(
        "--users", type=int, default=600, help=f"default %(default)s; at most {MAX_SYNTH_USERS:,}"
    )
    synth.add_argument(
        "--items", type=int, default=300, help=f"default %(default)s; at most {MAX_SYNTH_ITEMS:,}"
    )
    synth.add_argument("--seed", type=seed_flag, default=0, help="default %(default)s")
    synth.set_defaults(run=cmd_synth)

    train = commands.add_parser("train", help="meta-train a model and write its artifact")
    _add_data_flags(train)
    train.add_argument("--out", required=True, type=Path, help="model directory to write")
    train.add_argument("--seed", type=seed_flag, default=0, help="user split and initialisation")
    train.add_argument(
        "--support-sizes",
        type=_support_sizes,
        default=DEFAULT_SUPPORT_SIZES,
        help="k values validation averages over (default %(default)s)",
    )
    _add_config_flags(train, ModelConfig)
    _add_config_flags(train, TrainConfig)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="compare coldstart with the baselines")
    _add_data_flags(evaluate)
    evaluate.add_argument("--out", required=True, type=Path, help="directory for the results")
    evaluate.add_argument("--model", type=Path, help="evaluate this artifact on its own split")
    evaluate.add_argument(
        "--support-sizes",
        type=_support_sizes,
        default=DEFAULT_SUPPORT_SIZES,
        help="k values (default %(default)s); with --protocol melu, validation's only",
    )
    evaluate.add_argument("--seeds", type=_seeds, help="default 0,1,2 (one model each)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="coldstart")
    _add_config_flags(evaluate, ModelConfig)
    _add_config_flags(evaluate, TrainConfig)
    evaluate.set_defaults(run=cmd_evaluate)
