"""Memory profiles over the operator sequence (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .analyzer import MemoryResult


def plot_profiles(results: Sequence[MemoryResult], path: str | Path, title: Optional[str] = None,
                  dpi: int = 100) -> Path:
    """Draw each result's live-bytes profile (KiB) over its operator index, peak marked, stem shaded.

    Models with different operator counts share the x axis as operator index; the end of each
    model's stem is a dotted vertical line in its colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    styles = [("-", 2.2), ("--", 1.6), (":", 1.6), ("-.", 1.2)]
    for n, r in enumerate(results):
        kib = [b / 1024 for b in r.profile]
        label = f"{r.model} ({r.engine})"
        ls, lw = styles[n % len(styles)]
        (line,) = ax.plot(range(len(kib)), kib, lw=lw, ls=ls, label=label, drawstyle="steps-mid")
        c = line.get_color()
        i = r.peak_index
        ax.plot([i], [kib[i]], marker="o", color=c, ms=5)
        ax.annotate(f"{kib[i]:.0f}", (i, kib[i]), textcoords="offset points", xytext=(4, 4 + 9 * n), fontsize=7,
                    color=c)
        stem = next(iter(r.stage_spans.values()), None)
        if stem is not None:
            ax.axvline(stem[1] + 0.5, color=c, ls=":", lw=0.8)
        if r.arena_bytes is not None:
            ax.axhline(r.arena_bytes / 1024, color=c, ls="--", lw=0.7)
    arena = any(r.arena_bytes is not None for r in results)
    ax.set_xlabel("operator index (dotted: end of stem" + ("; dashed: TFLM arena)" if arena else ")"))
    bpe = results[0].bytes_per_element if results else 1
    ax.set_ylabel(f"live activations (KiB, {bpe} B/elem)")
    h, w = results[0].imgsz if results else (0, 0)
    ax.set_title(title or f"activation memory profile, {h}x{w}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
