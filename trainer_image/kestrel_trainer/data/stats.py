"""`kestrel dataset stats ROOT`: what is in an image folder, before training on it.

Only image headers are read (PIL opens lazily), so this is quick even on large folders.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kestrel_trainer.data.folders import scan

IMBALANCE_RATIO = 3.0  # warn when the largest class has more than 3x the images of the smallest


@dataclass
class DatasetStats:
    root: str
    per_class: dict[str, int]
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    modes: Counter = field(default_factory=Counter)  # PIL mode (L, RGB, RGBA, ...) -> count
    unreadable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_class.values())

    @property
    def imbalance(self) -> float:
        counts = list(self.per_class.values())
        return max(counts) / min(counts) if counts and min(counts) > 0 else float("inf")

    def warnings(self) -> list[str]:
        out = []
        if self.imbalance > IMBALANCE_RATIO:
            big = max(self.per_class, key=self.per_class.get)
            small = min(self.per_class, key=self.per_class.get)
            out.append(f"class imbalance: {big} has {self.per_class[big]} images, {small} has "
                       f"{self.per_class[small]} ({self.imbalance:.1f}x; consider rebalancing or class weights)")
        if self.unreadable:
            out.append(f"{len(self.unreadable)} file(s) could not be opened: run `kestrel dataset check`")
        return out


def dataset_stats(root: str) -> DatasetStats:
    from PIL import Image

    folder = scan(root)
    stats = DatasetStats(root=folder.root, per_class=folder.counts())
    for path in folder.files:
        try:
            with Image.open(path) as im:
                stats.sizes[im.size] += 1
                stats.modes[im.mode] += 1
        except (OSError, ValueError):
            stats.unreadable.append(path)
    return stats


def format_stats(stats: DatasetStats, top_sizes: int = 5) -> str:
    width = max(len(name) for name in stats.per_class)
    lines = [f"{stats.root}: {stats.total} images in {len(stats.per_class)} classes"]
    lines += [f"  {name:<{width}}  {n:>8}" for name, n in stats.per_class.items()]
    if stats.sizes:
        ws = [w for (w, _) in stats.sizes]
        hs = [h for (_, h) in stats.sizes]
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in stats.sizes.most_common(top_sizes))
        lines.append(f"sizes (WxH): {len(stats.sizes)} distinct, width {min(ws)}..{max(ws)}, "
                     f"height {min(hs)}..{max(hs)}; most common: {common}")
    lines.append("modes: " + ", ".join(f"{m} ({n})" for m, n in stats.modes.most_common()))
    lines += [f"warning: {w}" for w in stats.warnings()]
    return "\n".join(lines)
