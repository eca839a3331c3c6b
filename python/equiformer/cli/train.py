"""``equiformer-train CONFIG.yaml``: train an Equiformer potential (see docs/training.md)."""

import argparse
import sys
from typing import List, Optional

import yaml


def _parse_set(items: List[str]):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: --set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="equiformer-train",
        description="Train an Equiformer potential from a YAML config. Writes last.pt, best.pt, "
        "metrics.csv and config.yaml into run.output_dir (a committee, committee: K, writes one such "
        "folder per member: run.output_dir/member-0 ...).",
    )
    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt (run.resume)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if OUTPUT_DIR holds a run")
    parser.add_argument("--output-dir", help="override run.output_dir")
    parser.add_argument("--device", help="override run.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--epochs", type=int, help="override optim.epochs")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                        help="override any option (value parsed as YAML), e.g. --set optim.lr=1e-4; repeatable")
    parser.add_argument("--member", type=int, action="append", metavar="K",
                        help="committee runs: train only member K (repeatable), e.g. one member per machine")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--help-config", action="store_true", help="print every config option with its default and exit")
    args = parser.parse_args(argv)

    from equiformer.train.config import ConfigError, describe_schema, load_config

    if args.help_config:
        print(describe_schema())
        return 0
    if not args.config:
        parser.error("the CONFIG argument is required")
    overrides = _parse_set(args.set)
    if args.resume:
        overrides["run.resume"] = True
    if args.overwrite:
        overrides["run.overwrite"] = True
    if args.output_dir:
        overrides["run.output_dir"] = args.output_dir
    if args.device:
        overrides["run.device"] = args.device
    if args.epochs is not None:
        overrides["optim.epochs"] = args.epochs
    if args.no_progress:
        overrides["run.progress"] = False
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"equiformer-train: {exc}", file=sys.stderr)
        return 2

    from equiformer.train.checkpoint import CheckpointError
    from equiformer.train.committee import train_committee
    from equiformer.train.trainer import TrainingInterrupted, train

    size = cfg["committee"]["size"]
    if args.member and size == 1:
        print("equiformer-train: --member needs a committee config (committee: K with K > 1)", file=sys.stderr)
        return 2
    try:
        if size > 1:
            result = train_committee(cfg, args.member)
            print(f"done: committee of {size} in {result['output_dir']} (members "
                  f"{', '.join(str(k) for k in result['members'])} trained); export it with "
                  f"`equiformer-export {result['output_dir']} committee.pt`")
            return 0
        summary = train(cfg)
    except TrainingInterrupted as exc:
        print(f"\n{exc}\nresume with: equiformer-train {args.config} --resume"
              + (f" --output-dir {args.output_dir}" if args.output_dir else ""), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\naborted; the last completed epoch is in {cfg['run']['output_dir']}/last.pt "
              f"(resume with: equiformer-train {args.config} --resume)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError, FloatingPointError) as exc:
        print(f"equiformer-train: {exc}", file=sys.stderr)
        return 1
    print(f"done: best {summary['best']} (epoch {summary['best_epoch']}), last {summary['last']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
