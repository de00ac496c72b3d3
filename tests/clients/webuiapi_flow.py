"""Drives a server with the `webuiapi` client, as a user's script would.

Usage: python webuiapi_flow.py HOST PORT
Prints one JSON object with what the client saw; exits non-zero on any failure.
"""

import json
import sys

import webuiapi
from PIL import Image


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    api = webuiapi.WebUIApi(host=host, port=port)

    models = api.get_sd_models()
    titles = [m["title"] for m in models]

    options = api.get_options()
    before = options["sd_model_checkpoint"]
    api.set_options({"samples_format": "png", "jpeg_quality": 91})
    after = api.get_options()

    t2i = api.txt2img(prompt="a lighthouse at dusk", steps=4, width=512, height=512, seed=11)
    first = t2i.images[0]
    assert isinstance(first, Image.Image), type(first)

    i2i = api.img2img(images=[first], prompt="the same lighthouse, at night", steps=4,
                      denoising_strength=0.4, seed=12)
    assert isinstance(i2i.images[0], Image.Image)

    print(json.dumps({
        "models": titles,
        "checkpoint": before,
        "jpeg_quality": after["jpeg_quality"],
        "txt2img_images": len(t2i.images),
        "txt2img_size": list(first.size),
        "img2img_images": len(i2i.images),
        "txt2img_seed": t2i.info.get("seed"),
    }))


if __name__ == "__main__":
    main()
