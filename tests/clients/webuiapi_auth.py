"""A `webuiapi` user behind a proxy with client keys: `set_auth` with any user name and the
key as password, as its README shows for a WebUI started with --api-auth.

Usage: python webuiapi_auth.py HOST PORT KEY
Prints one JSON object with what the client saw; exits non-zero on any failure.
"""

import json
import sys

import webuiapi


def main() -> None:
    host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    api = webuiapi.WebUIApi(host=host, port=port)
    api.set_auth("discord-bot", key)
    models = api.get_sd_models()
    result = api.txt2img(prompt="a key-holder's lighthouse", steps=3, width=512, height=512, seed=5)
    print(json.dumps({
        "models": len(models),
        "images": len(result.images),
        "seed": result.info["seed"],
    }))


if __name__ == "__main__":
    main()
