"""Print the requirements of some extras of pyproject.toml, one a line, for `pip install -r`.

The Dockerfiles install dependencies from this list before they copy the source, so the large
dependency layer (torch alone is gigabytes) is rebuilt only when pyproject.toml changes, not on
every code edit. `waldo[...]` self-references are followed; an unknown extra is an error.

    python requirements.py training distributed > requirements.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

SELF = re.compile(r"^waldo\[(?P<extras>[^\]]+)\]$")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The base dependencies plus those of `extras`, in order, without duplicates."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has: {', '.join(sorted(optional))}")
        seen.add(extra)
        for req in optional[extra]:
            match = SELF.match(req.replace(" ", ""))
            if match:
                for name in match["extras"].split(","):
                    add(name)
            elif req not in out:
                out.append(req)

    out.extend(project.get("dependencies", []))
    for extra in extras:
        add(extra)
    return out


def main(argv: list[str]) -> None:
    path = Path("pyproject.toml")
    if not argv:
        raise SystemExit("usage: requirements.py EXTRA [EXTRA ...]  (run beside pyproject.toml)")
    print("\n".join(requirements(tomllib.loads(path.read_text()), argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
