"""The one parser of the projection einsums (``x,w->out``), shared by the layer code, the LoRA
equations, the merge and the custom weight gradient."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Einsum:
    """``x,w->out`` split into its subscripts and what each weight axis does."""

    x: str
    w: str
    out: str

    @classmethod
    def parse(cls, equation: str) -> "Einsum":
        inputs, out = equation.split("->")
        x, w = inputs.split(",")
        return cls(x, w, out)

    @property
    def equation(self) -> str:
        return f"{self.x},{self.w}->{self.out}"

    @property
    def weight_inputs(self) -> str:
        """The weight's axes contracted with x, in the weight's order (q: ``d``, o: ``nh``)."""
        return "".join(ch for ch in self.w if ch in self.x)

    @property
    def weight_outputs(self) -> str:
        """The weight's axes that appear in the output (q: ``nh``)."""
        return "".join(ch for ch in self.w if ch not in self.x)

    @property
    def batch(self) -> str:
        """The axes of x that pass through (``bs``)."""
        return "".join(ch for ch in self.x if ch not in self.w)

    def lora(self) -> tuple[str, str]:
        """The two einsums of a LoRA adapter on this projection: x·A (in → R), then ·B
        (R → out); e.g. ``bsnh,nhd->bsd``: ``bsnh,nhr->bsr`` and ``bsr,rd->bsd``."""
        return (f"{self.x},{self.weight_inputs}r->{self.batch}r",
                f"{self.batch}r,r{self.weight_outputs}->{self.out}")

    def lora_delta(self) -> str:
        """The stacked weight from stacked A and B, the L axis kept (q: ``ldr,lrnh->ldnh``)."""
        assert "l" not in self.w and "r" not in self.w
        return f"l{self.weight_inputs}r,lr{self.weight_outputs}->l{self.w}"
