"""A `webuiapi` user polling progress: `get_progress()` as its README shows.

Usage: python webuiapi_progress.py HOST PORT
Prints what `get_progress()` returned, as JSON; exits non-zero on any failure.
"""

import json
import sys

import webuiapi


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    api = webuiapi.WebUIApi(host=host, port=port)
    progress = api.get_progress()
    print(json.dumps(progress))


if __name__ == "__main__":
    main()
