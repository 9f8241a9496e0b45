"""``mergesmith demo``: tiny local LLaMA checkpoints merged with several methods, end to end from YAML.

Each merge goes through the same path as ``mergesmith merge``: a YAML config, the plan, the streaming engine, an
output directory that transformers loads. The table compares how much of each expert's task vector the merge
keeps (cosine of merged - base with expert - base, averaged) and how close the merged model's next-token
distribution is to the experts' (mean KL divergence on a fixed batch of random token ids).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

DEMO_MERGES: dict[str, dict] = {
    "linear": {"parameters": {"weight": 1.0}},
    "task_arithmetic": {"parameters": {"weight": 1.0, "lambda": 0.5}},
    "ties": {"parameters": {"weight": 1.0, "density": 0.3}},
    "dare_ties": {"parameters": {"weight": 1.0, "density": 0.5}},
    "breadcrumbs": {"parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.01}},
    "della": {"parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
    "magmax": {"parameters": {}},
    "model_stock": {"parameters": {}},
    "karcher": {"parameters": {}},
}


def demo_config(method: str, family, extra: dict) -> dict:
    config = {"merge_method": method, "dtype": "float32", "seed": 0}
    from mergesmith.methods import METHODS

    spec = METHODS[method]
    models = [{"model": str(p)} for p in family.experts]
    if spec.base != "unused":
        config["base_model"] = str(family.base)
    config["models"] = models
    if extra.get("parameters"):
        config["parameters"] = extra["parameters"]
    return config


def run_demo(out_dir: Path, *, force: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    from mergesmith.api import merge
    from mergesmith.methods import METHODS
    from mergesmith.tiny_models import build_tiny_family

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            from mergesmith.errors import MergesmithError

            raise MergesmithError(f"{out_dir} exists and is not empty; pass --force to rebuild the demo there")
        shutil.rmtree(out_dir)
    echo(f"building a tiny LLaMA base and 3 fine-tuned experts under {out_dir / 'models'}")
    family = build_tiny_family(out_dir / "models", "llama", 3, layers=4)
    rows = []
    for method, extra in DEMO_MERGES.items():
        if method not in METHODS:
            continue
        config = demo_config(method, family, extra)
        config_path = out_dir / "configs" / f"{method}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        target = out_dir / "merged" / method
        started = time.perf_counter()
        merge(config_path, target, force=True)
        seconds = time.perf_counter() - started
        rows.append({"method": method, "seconds": seconds, **_quality(family, target)})
        echo(f"merged {method:16s} -> {target}  ({seconds:.2f} s)")
    echo("")
    echo(f"{'method':16s} {'seconds':>8s} {'task-vector cosine':>19s} {'KL to experts':>14s}")
    for row in rows:
        echo(f"{row['method']:16s} {row['seconds']:8.2f} {row['cosine']:19.3f} {row['kl']:14.4f}")
    echo(f"\nconfigs: {out_dir / 'configs'}   merged models: {out_dir / 'merged'}")
    return rows


def _quality(family, merged_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    base = load(family.base).state_dict()
    merged_model = load(merged_dir)
    merged = merged_model.state_dict()
    cosines = []
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    kls = []
    with torch.no_grad():
        merged_logp = merged_model(tokens).logits.log_softmax(-1)
        for path in family.experts:
            expert_model = load(path)
            expert = expert_model.state_dict()
            tau_m = torch.cat([(merged[k] - base[k]).flatten() for k in base if base[k].is_floating_point()])
            tau_e = torch.cat([(expert[k] - base[k]).flatten() for k in base if base[k].is_floating_point()])
            cosines.append(torch.nn.functional.cosine_similarity(tau_m, tau_e, dim=0).item())
            expert_logp = expert_model(tokens).logits.log_softmax(-1)
            kls.append(
                torch.nn.functional.kl_div(merged_logp, expert_logp, log_target=True, reduction="batchmean").item()
            )
    return {"cosine": sum(cosines) / len(cosines), "kl": sum(kls) / len(kls)}
