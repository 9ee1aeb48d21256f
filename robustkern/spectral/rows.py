"""The per-layer table's data: ``LayerBound`` (one row) and ``LipschitzTable`` (the rows, the
network's bound, and their rendering as text and JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerBound:
    """One row of the table. ``upper`` is the layer's own bound (for a residual addition or a
    concatenation: relative to the branch point), inf for a layer robustkern cannot bound."""

    name: str
    kind: str
    weight_shape: tuple[int, ...] | None
    stride: tuple[int, int] | None
    input_size: tuple[int, ...]
    upper: float
    lower: float | None = None
    note: str = ""


@dataclass
class LipschitzTable:
    """Per-layer upper Lipschitz bounds (L2) and ``product``, the network's bound: the bounds
    propagated through the model's graph (their product along a chain, L_a + L_b where a
    residual branch joins)."""

    rows: list[LayerBound] = field(default_factory=list)
    product: float = 1.0
    input_shape: tuple[int, ...] = ()

    def unbounded(self) -> list[LayerBound]:
        """The rows robustkern could not bound (each note says why)."""
        return [r for r in self.rows if r.note.startswith("cannot bound")]

    def __str__(self) -> str:
        head = ["layer", "kind", "weight", "stride", "input", "upper", "lower", "note"]
        body = [
            [
                r.name,
                r.kind,
                "x".join(map(str, r.weight_shape)) if r.weight_shape else "",
                "x".join(map(str, r.stride)) if r.stride else "",
                "x".join(map(str, r.input_size)),
                f"{r.upper:.4g}",
                "" if r.lower is None else f"{r.lower:.4g}",
                r.note,
            ]
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row).rstrip() for row in body]
        lines.append(
            "\nproduct of the bounds through the graph (sums at residual additions), the network "
            f"Lipschitz upper bound: {self.product:.4g}"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {"input_shape": self.input_shape, "product": self.product,
             "rows": [asdict(r) for r in self.rows]},
            indent=2,
        )  # fmt: skip
