#!/usr/bin/env python3
"""Writes bench/workloads/mixed.json: the decision benchmark's fixed, seeded workload.

120 txt2img requests from 8 clients (request i belongs to client i % 8; each client sends
its own requests in this order, one at a time). Each client has a favourite family (clients
0-2 SD 1.5, 3-5 SDXL, 6-7 Flux) that it asks for 70% of the time, else another family.
Sizes, batch sizes, steps and SD 1.5's hires fix vary per family. The family is given the
way clients give it: override_settings.sd_model_checkpoint. A quick run takes the first 40.

    python3 bench/workloads/make_mixed.py   # rewrites mixed.json (same seed, same file)
"""

import json
import random
from pathlib import Path

SEED = 20260505
REQUESTS = 120
CLIENTS = 8
CHECKPOINTS = {
    "flux": "flux1-dev-Q4_0.gguf",
    "sdxl": "sd_xl_base_1.0.safetensors",
    "sd15": "v1-5-pruned-emaonly.safetensors",
}
FAVOURITE = ["sd15", "sd15", "sd15", "sdxl", "sdxl", "sdxl", "flux", "flux"]
SIZES = {
    "sd15": [(512, 512), (512, 768), (768, 512), (768, 768)],
    "sdxl": [(1024, 1024), (832, 1216), (1216, 832), (896, 1152)],
    "flux": [(1024, 1024), (896, 1152), (1152, 896), (768, 768)],
}
BATCHES = {"sd15": [1, 1, 2, 4], "sdxl": [1, 1, 1, 2], "flux": [1, 1, 1, 2]}
STEPS = {"sd15": (20, 30), "sdxl": (25, 35), "flux": (16, 28)}
PROMPTS = ["a lighthouse at dusk", "a red fox in snow", "a city street in the rain", "a bowl of ramen",
           "a mountain lake", "an astronaut reading", "a steam train", "a field of sunflowers"]


def request(rng: random.Random, i: int) -> dict:
    client = i % CLIENTS
    family = FAVOURITE[client]
    if rng.random() >= 0.7:
        family = rng.choice([f for f in CHECKPOINTS if f != family])
    width, height = rng.choice(SIZES[family])
    body = {
        "prompt": rng.choice(PROMPTS),
        "negative_prompt": "",
        "seed": rng.randrange(2**31),
        "steps": rng.randint(*STEPS[family]),
        "width": width,
        "height": height,
        "batch_size": rng.choice(BATCHES[family]),
        "sampler_name": "Euler",
        "cfg_scale": 1.0 if family == "flux" else 7.0,
        "override_settings": {"sd_model_checkpoint": CHECKPOINTS[family]},
    }
    if family == "sd15" and rng.random() < 0.15:
        body.update(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=10, denoising_strength=0.5)
    return {"id": i, "client": client, "family": family, "route": "txt2img", "body": body}


def main() -> None:
    rng = random.Random(SEED)
    workload = {
        "description": __doc__.strip().splitlines()[0],
        "generator": "bench/workloads/make_mixed.py",
        "seed": SEED,
        "clients": CLIENTS,
        "quick_requests": 40,
        "requests": [request(rng, i) for i in range(REQUESTS)],
    }
    out = Path(__file__).with_name("mixed.json")
    out.write_text(json.dumps(workload, indent=1) + "\n")
    counts = {f: sum(1 for r in workload["requests"] if r["family"] == f) for f in CHECKPOINTS}
    print(f"wrote {out}: {REQUESTS} requests, {counts}")


if __name__ == "__main__":
    main()
