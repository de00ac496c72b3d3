"""The proxy's embedded *auto* memory policy (README "What it decides, and why"), in Python:
the forge_inference_memory a generation of a family needs on a card of a given size. The
decision benchmark asks the proxy itself (POST /proxy/plan/txt2img) and uses this only to
cross-check its answers."""

from __future__ import annotations

import math

PROFILES = {
    # weights_mib, min_inference_mib, inference_per_megapixel_mib, reference_megapixels
    "flux": (12288, 4096, 1536, 1.0),
    "sdxl": (6656, 2048, 1024, 1.0),
    "sd15": (2048, 1024, 768, 0.25),
}
MIN_CHANGE_MIB = 256  # the proxy's memory.min_change_mib: smaller differences are not changed


def megapixels(body: dict) -> float:
    width, height = int(body.get("width") or 512), int(body.get("height") or 512)
    w, h = width, height
    if body.get("enable_hr"):
        if body.get("hr_resize_x") or body.get("hr_resize_y"):
            raise NotImplementedError("hr_resize_x/y")
        scale = float(body.get("hr_scale") or 2.0)
        w, h = max(width, int(width * scale)), max(height, int(height * scale))
    return w * h * max(1, int(body.get("batch_size") or 1)) / (1024 * 1024)


def inference_mib(family: str, total_mib: int, body: dict) -> int:
    weights, min_inf, per_mp, ref_mp = PROFILES[family]
    reserve = min_inf + math.ceil(max(0.0, megapixels(body) - ref_mp) * per_mp)
    wanted = total_mib - min(weights, max(0, total_mib - reserve))
    floor = math.ceil(min(512, total_mib * 0.05))
    return min(max(wanted, floor), total_mib)


def article_recipe(family: str) -> int:
    """The seed article's values, which know only Flux and SD: Flux 4096, all else 10240."""
    return 4096 if family == "flux" else 10240
