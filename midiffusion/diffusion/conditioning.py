"""The network's condition: ``[cross-LMI(source, state), self-LMI(source, source)]``.

Training and sampling call the same function with the same settings (read from the model card),
so the network sees at test time exactly the kind of maps it was trained on (the published code
does not: it trains on NMI and samples with raw MI for 4 of 5 configs; docs/lmi.md).

How the noisy state is shown to LMI (``state``):
- ``"range_consistent"`` (clean): the VE state ``x0 + sigma * eps`` mapped from the model's data
  range to [0,1] and clipped. Early in sampling this is a clipped, mostly binary image; late it is
  the image itself. LMI always gets values in its working range, so there is no NMI = 2
  saturation (docs/lmi.md).
- ``"raw_vp"`` (faithful): the VP state ``x_t`` itself, unclipped, as the published sampler does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from midiffusion.lmi import LMISettings, SourceLMI, local_mutual_information

STATES = ("range_consistent", "raw_vp")


@dataclass(frozen=True)
class ConditioningSpec:
    lmi: LMISettings = field(default_factory=LMISettings)
    state: str = "range_consistent"
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown conditioning state {self.state!r}; accepted: {STATES}")

    def to_dict(self) -> dict:
        return {"lmi": self.lmi.to_dict(), "state": self.state, "data_range": list(self.data_range)}

    @classmethod
    def from_dict(cls, d: dict) -> ConditioningSpec:
        return cls(
            lmi=LMISettings.from_dict(d["lmi"]),
            state=d.get("state", "range_consistent"),
            data_range=tuple(d.get("data_range", (-1.0, 1.0))),
        )

    # --- data-range helpers ------------------------------------------------------------------
    def to_model(self, image01: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return image01 * (hi - lo) + lo

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return ((x - lo) / (hi - lo)).clamp(0, 1)

    # --- the maps ----------------------------------------------------------------------------
    def self_map(self, source01: torch.Tensor) -> torch.Tensor:
        return local_mutual_information(source01, source01, **self.lmi.to_dict()).similarity

    def state_image(self, x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What LMI compares the source with, for VE state ``x_ve`` at noise level ``sigma``."""
        if self.state == "range_consistent":
            return self.to_unit(x_ve)
        return x_ve / (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()  # VP state, unclipped

    def source_lmi(self, source01: torch.Tensor) -> SourceLMI:
        """LMI against ``source01`` with this spec's settings, its source half computed once."""
        return SourceLMI(source01, self.lmi)

    def condition(
        self,
        source01: torch.Tensor | SourceLMI,
        x_ve: torch.Tensor,
        sigma: torch.Tensor,
        self_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,2,H,W) condition for VE state ``x_ve``. A caller that conditions on one source at
        many steps passes it as :meth:`source_lmi` and caches ``self_map``."""
        lmi = source01
        if not isinstance(lmi, SourceLMI):  # the source's half is kept only for a second use
            lmi = SourceLMI(source01, self.lmi, keep=self_map is None)
        if self_map is None:
            self_map = lmi(lmi.source).similarity
        cross = lmi(self.state_image(x_ve, sigma)).similarity
        return torch.cat([cross, self_map], dim=1)
