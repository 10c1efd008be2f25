"""The CT severity scale, as data: one tuple of percentage edges gives the score, its bins and its wording.

Per region (zone or lobe) the infected percentage of the region's lung scores 0 none, 1 below the first edge,
then one more point above each further edge: with the default edges (5, 25, 50, 75) this is the published
0-5 scale (0 none, 1 < 5 %, 2 5-25 %, 3 > 25-50 %, 4 > 50-75 %, 5 > 75 %).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeverityScale:
    """Scores 0..len(edges)+1 from an involvement percentage."""

    edges: tuple[float, ...] = (5.0, 25.0, 50.0, 75.0)

    @property
    def max_score(self) -> int:
        return len(self.edges) + 1

    def score(self, percent: float) -> int:
        """0 for no involvement; 1 below ``edges[0]``; then +1 above each further edge (the first edge is
        inclusive: ``edges[0]`` % scores 2, as in "5-25 %")."""
        if percent <= 0.0:
            return 0
        if percent < self.edges[0]:
            return 1
        return 2 + sum(percent > edge for edge in self.edges[1:])

    def bins(self) -> list[str]:
        """One label per score: ``"0: no involvement (0 %)"``, ``"1: < 5 %"``, ``"2: 5-25 %"``, ..."""
        e = [f"{edge:g}" for edge in self.edges]
        labels = ["0: no involvement (0 %)", f"1: < {e[0]} %", f"2: {e[0]}-{e[1]} %"]
        labels += [f"{i + 3}: > {e[i + 1]}-{e[i + 2]} %" for i in range(len(e) - 2)]
        labels.append(f"{self.max_score}: > {e[-1]} %")
        return labels

    def describe(self, region: str = "zone") -> str:
        """The scale in one sentence, for reports."""
        parts = ", ".join(label.replace(":", "", 1).replace("no involvement (0 %)", "none") for label in self.bins())
        return f"Per {region}: {parts} of the {region} infected."


#: the scale every score of CovidCT uses
SEVERITY_SCALE = SeverityScale()
