"""Print the project's requirements for the given extras, one per line, read from pyproject.toml.

Used inside image builds (`python3 requirements.py pyproject.toml trainer operator > req.txt`) so an image
installs exactly what pyproject.toml lists, pinned by constraints.txt, before the source is copied (the
dependency layer stays cached when only the code changes). `--replace OLD=NEW` swaps a requirement's name
and keeps its version: the GPU image uses `--replace tensorflow-cpu=tensorflow[and-cuda]`.
"""

import argparse
import re

import tomllib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--replace", action="append", default=[], metavar="OLD=NEW")
    args = parser.parse_args()
    swaps = dict(r.split("=", 1) for r in args.replace)
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for extra in args.extras:
        reqs += project["optional-dependencies"][extra]
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
        print(swaps.get(name, name) + req[len(name):])


if __name__ == "__main__":
    main()
