"""Links in the user's image folders: which are followed, and every file read once.

torchvision's ImageFolder walks each class folder with `os.walk(followlinks=True)`. A link to
`.` or `..` inside a class folder then makes it read the same files again and again, each time
under the class of the folder it found them in (24 images became 10,824 rows, every one in
train and in test, some under another class's label), and a link may lead anywhere on the
machine. `FolderWalk` is the walk `training.data.folder.LinkSafeImageFolder` uses instead:

- a link to a folder is followed only when it leads inside the data root (`--data-dir`) to a
  folder that the data set does not read anyway: never to `.`, `..`, a class or split folder,
  a folder another link led to, or out of the data root;
- a file reached by two paths (a hard link, a link to a file, a folder reached twice) is read
  once: under its own path rather than a link's, else the first in walk order;
- each skipped link and duplicate gets a warning line (logger `waldo.data`), the first
  `SHOWN_SKIPS` of them, then a count.

Links to single files are read wherever they lead, as a folder of links into a photo library
is a common way to make a data set. Files reached as copies (the same bytes under two names)
are no links; `training.data.leakage` finds those when they cross splits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from training.errors import WaldoError

log = logging.getLogger("waldo.data")
SHOWN_SKIPS = 5  # skipped links and duplicates named one per line; the rest are counted


def _related(a: Path, b: Path) -> bool:
    """Whether one folder lies inside the other (or they are the same)."""
    return a.is_relative_to(b) or b.is_relative_to(a)


class FolderWalk:
    """One data set's walk: its root, the folders it reads, the links it followed and what it
    skipped. A data module makes one per load and hands it to each split's ImageFolder."""

    def __init__(self, data_root: str | Path, read_roots: list[Path]):
        self.data_root = Path(data_root).resolve()
        self.read_roots = [Path(r).resolve() for r in read_roots]
        self.followed: list[Path] = []  # targets of the folder links followed so far
        self.skipped: list[str] = []  # one phrase per skipped link or duplicate

    @classmethod
    def of_splits(cls, root: Path, splits: list[str]) -> FolderWalk:
        """The walk of a data root read as the sub-folders `splits` (train/, val/, test/) or,
        with no splits, as one folder of classes. A split folder may be a link, but not one out
        of the data root or onto another split: that cannot be skipped, so it is an error."""
        if not splits:
            return cls(root, [root])
        resolved = {split: (root / split).resolve() for split in splits}
        for split, target in resolved.items():
            if not target.is_relative_to(root.resolve()):
                raise WaldoError(f"{str(root / split)!r} is a link to {str(target)!r}, outside "
                                 f"--data-dir {str(root)!r}; links are followed only inside it")
        for i, a in enumerate(splits):
            for b in splits[i + 1:]:
                if _related(resolved[a], resolved[b]):
                    raise WaldoError(f"{str(root / a)!r} and {str(root / b)!r} are the same folder "
                                     "(through a link): every image would be in both splits")
        return cls(root, list(resolved.values()))

    def link_problem(self, link: Path) -> str | None:
        """Why the folder link `link` is not followed, or None when it is (then it counts as
        followed: a second link to the same place is skipped)."""
        try:
            target = link.resolve()
        except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
            return "it loops"
        if not target.is_relative_to(self.data_root):
            return f"it leads outside --data-dir (to {str(target)!r})"
        if any(_related(target, root) for root in self.read_roots):
            return f"it leads to {str(target)!r}, which the data set reads anyway"
        if any(_related(target, seen) for seen in self.followed):
            return f"it leads to {str(target)!r}, which another link led to already"
        self.followed.append(target)
        return None

    def _skip_link(self, link: Path, problem: str) -> None:
        self.skipped.append(f"link {str(link)!r}: {problem}")

    def subfolders(self, directory: str | Path) -> list[str]:
        """The names of the folders in `directory` (its classes), sorted, links to folders among
        them only when they may be followed."""
        names = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.is_dir():  # follows links: a link to a file is no class
                continue
            if entry.is_symlink() and (problem := self.link_problem(Path(entry.path))):
                self._skip_link(Path(entry.path), problem)
                continue
            names.append(entry.name)
        return names

    def files(self, top: Path) -> list[tuple[str, bool]]:
        """(path, reached through a folder link) of every file under `top`, in the order
        torchvision's make_dataset lists them (folders by sorted path, files sorted within)."""
        folders = sorted(self._walk(top, linked=Path(top).is_symlink()), key=lambda folder: folder[0])
        return [(os.path.join(root, name), linked) for root, names, linked in folders for name in names]

    def _walk(self, top: Path, linked: bool) -> list[tuple[str, list[str], bool]]:
        out = []
        for root, dirs, names in os.walk(top):  # links to folders land in `dirs`, not entered
            out.append((root, sorted(names), linked))
            for name in dirs:
                path = Path(root, name)
                if not path.is_symlink():
                    continue
                problem = self.link_problem(path)
                if problem:
                    self._skip_link(path, problem)
                else:
                    out += self._walk(path, linked=True)
        return out

    def read_once(self, found: list[tuple[str, int, bool]]) -> list[tuple[str, int]]:
        """`found` ((path, class index, reached through a folder link)) with every file kept
        once, by (st_dev, st_ino): the first path that is no link (neither the file nor a folder
        on the way), else the first path, in the order given. Files that cannot be stat'ed stay
        (the image check names them)."""

        def identity(path: str) -> tuple[int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st.st_dev, st.st_ino

        def own(i: int) -> bool:
            return not found[i][2] and not os.path.islink(found[i][0])

        keys = [identity(path) for path, _, _ in found]
        keeper: dict[tuple[int, int], int] = {}
        for i, key in enumerate(keys):
            if key is not None and (key not in keeper or (own(i) and not own(keeper[key]))):
                keeper[key] = i
        out = []
        for i, ((path, target, _), key) in enumerate(zip(found, keys)):
            if key is None or keeper[key] == i:
                out.append((path, target))
            else:
                self.skipped.append(f"{path!r}: the same file as {found[keeper[key]][0]!r}, read once")
        return out

    def report(self, where: str) -> None:
        """One warning line per skipped link or duplicate, the first SHOWN_SKIPS of them, then
        a count of the rest."""
        for phrase in self.skipped[:SHOWN_SKIPS]:
            log.warning("skipping %s", phrase)
        more = len(self.skipped) - SHOWN_SKIPS
        if more > 0:
            log.warning("skipped %d more links or duplicate files in %r", more, where)


__all__ = ["SHOWN_SKIPS", "FolderWalk"]
