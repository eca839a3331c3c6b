"""Training a committee: K members of one config that differ only in their seed (and,
optionally, their train/validation split), for model-deviation uncertainty (docs/committees.md).

A committee run is a folder holding ``committee.yaml`` (size, split, the members' seeds) and
one ordinary run folder per member, ``member-0`` .. ``member-{K-1}``: each member is trained,
checkpointed and resumed exactly like a single model, so members can also be trained on
different machines (``equiformer-train CONFIG --member K``) and collected afterwards;
``equiformer-export RUN_FOLDER committee.pt`` reads the folder.
"""

import copy
import os
from typing import Any, Dict, List, Optional

import yaml

COMMITTEE_FILE = "committee.yaml"


def member_dir(output_dir: str, k: int) -> str:
    return os.path.join(output_dir, f"member-{k}")


def member_config(cfg: Dict[str, Any], k: int) -> Dict[str, Any]:
    """The single-model config of member k: seed run.seed + k, its own folder, and the split
    of the committee's `split` choice."""
    size = cfg["committee"]["size"]
    if not 0 <= k < size:
        raise ValueError(f"member {k} does not exist: committee.size is {size} (members 0..{size - 1})")
    out = copy.deepcopy(cfg)
    base_seed = cfg["run"]["seed"]
    split_seed = cfg["data"]["split_seed"] if cfg["data"]["split_seed"] is not None else base_seed
    out["run"]["seed"] = base_seed + k
    out["data"]["split_seed"] = split_seed + k if cfg["committee"]["split"] == "per_member" else split_seed
    out["run"]["output_dir"] = member_dir(cfg["run"]["output_dir"], k)
    out["committee"] = {"size": 1, "split": "shared"}
    return out


def _write_description(cfg: Dict[str, Any]) -> None:
    """committee.yaml: what the folder holds; refuses a folder that holds another committee."""
    out_dir = cfg["run"]["output_dir"]
    size, split = cfg["committee"]["size"], cfg["committee"]["split"]
    path = os.path.join(out_dir, COMMITTEE_FILE)
    if os.path.isfile(path):
        with open(path) as fh:
            old = yaml.safe_load(fh) or {}
        if (old.get("size"), old.get("split"), old.get("base_seed")) != (size, split, cfg["run"]["seed"]):
            raise ValueError(
                f"{out_dir} already holds a committee of size {old.get('size')} (split {old.get('split')}, "
                f"base seed {old.get('base_seed')}), not {size} ({split}, {cfg['run']['seed']}); "
                "choose another run.output_dir"
            )
    os.makedirs(out_dir, exist_ok=True)
    description = {
        "size": size, "split": split, "base_seed": cfg["run"]["seed"],
        "members": [{"folder": f"member-{k}", "seed": member_config(cfg, k)["run"]["seed"],
                     "split_seed": member_config(cfg, k)["data"]["split_seed"]} for k in range(size)],
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(description, fh, sort_keys=False)
    os.replace(tmp, path)


def train_committee(cfg: Dict[str, Any], members: Optional[List[int]] = None, log=print,
                    stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
    """Train the committee's members (all, or ``members``) one after the other. With
    ``run.resume`` a finished member is left as it is (its run has nothing left to do), a
    partial one continues, a missing one starts."""
    from .trainer import train

    size = cfg["committee"]["size"]
    members = list(range(size)) if members is None else list(members)
    for k in members:
        member_config(cfg, k)  # a member outside the committee fails before any training
    _write_description(cfg)
    summaries = {}
    for k in members:
        mcfg = member_config(cfg, k)
        resuming = mcfg["run"]["resume"] and os.path.isfile(os.path.join(mcfg["run"]["output_dir"], "last.pt"))
        log(f"committee member {k} of {size} (seed {mcfg['run']['seed']}, split seed {mcfg['data']['split_seed']}) "
            f"-> {mcfg['run']['output_dir']}" + (" (resuming)" if resuming else ""))
        summaries[k] = train(mcfg, stop_after_steps=stop_after_steps, log=log)
    return {"output_dir": cfg["run"]["output_dir"], "members": summaries}
