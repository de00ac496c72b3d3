"""Switches between a Flux and an SD 1.5 checkpoint through override_settings, with the
`webuiapi` client, as a user's script would.

Usage: python webuiapi_profiles.py HOST PORT FLUX_CHECKPOINT SD15_CHECKPOINT
Prints one JSON object per generation with what the client saw.
"""

import json
import sys

import webuiapi


def main() -> None:
    host, port, flux, sd15 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    api = webuiapi.WebUIApi(host=host, port=port)
    seen = []
    for checkpoint in (flux, sd15):
        result = api.txt2img(prompt="a lighthouse", steps=3, seed=5,
                             override_settings={"sd_model_checkpoint": checkpoint})
        seen.append({
            "checkpoint": checkpoint,
            "images": len(result.images),
            "cfg_scale": result.parameters.get("cfg_scale"),
            "scheduler": result.parameters.get("scheduler"),
        })
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
