"""A manifest's claims as checks: each one a machine-checkable assertion over the manifest's own results.

    headline: mbquant                    # the arm every check compares with the others (default: the first
                                         # MBQuant arm, else the first arm)
    claims:
      - check: storage_at_most           # its storage to serve every bit-width <= each other arm's, per model
      - check: bitops_equal              # its BitOPs at every bit-width == the `against` arms' (relative tolerance)
        against: [dedicated]
      - check: switching_error_below     # its switching error (quant_error's `measure`) < each `against` arm's,
        against: [anyprecision, adabits] # at every bit-width below the largest
        measure: bn_drift                # one of quant_error's kinds (suite.analyses)
        arm: mbquant-clean               # made by another arm than the headline
        tolerance: 0.01                  # absolute, in the measure's units
      - check: top1_not_below            # paired over seeds, its top-1 minus each other arm's: the 95 % interval
        tolerance: 1.0                   # lies above -tolerance (top-1 points) at every bit-width, or at `bits`
        bits: [2, 4, 6]

Verdicts: "holds", "fails" or "inconclusive" (suite.report.claims); accuracy claims checked on a shortened profile
are labelled with its scale, and a pipeline-check profile (too short to learn) checks none. A plugin method's
manifest states its own claims the same way.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from suite.analyses import QUANT_ERROR

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
CHECKS = {  # what each check asserts of the headline arm, as the report words it
    "storage_at_most": "needs at most the storage of {against} to serve every bit-width (same model)",
    "bitops_equal": "costs the BitOPs of {against} at every bit-width",
    "switching_error_below": "switches bit-width with less {measure} than {against} below the largest bit-width",
    "top1_not_below": "is not below {against} in top-1 at {bits} (paired over seeds, 95 % interval)",
}
MEASURE_WORDS = {  # suite.quant_error's columns, as a claim words them
    "weight": "weight error (same stored rows)", "weight_datapath": "weight error (same data-path position)",
    "act": "activation error", "drift": "layer-output drift", "bn_drift": "BN-output drift",
    "logits": "drift of the logits"}
SHORT = {"storage_at_most": "storage", "bitops_equal": "BitOPs", "switching_error_below": "switching error",
         "top1_not_below": "top-1"}


class Claim(BaseModel):
    """One checked claim of a manifest."""

    model_config = ConfigDict(extra="forbid")

    check: Literal["storage_at_most", "bitops_equal", "switching_error_below", "top1_not_below"]
    arm: str | None = Field(None, description="the arm that makes the claim (default: the manifest's headline)")
    against: list[str] = Field(default_factory=list, description="arms compared with the headline (default: every "
                                                                  "other arm)")
    measure: Literal[QUANT_ERROR.kinds] = Field("weight", description="switching_error_below: the quant_error measure")
    tolerance: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="storage, BitOPs: relative; switching error: absolute; top-1: points")
    bits: list[StrictInt] | None = Field(None, min_length=1, description="top1_not_below: the bit-widths checked "
                                                                   "(default: every one)")

    def describe(self, headline: str) -> str:
        against = ", ".join(self.against) or "every other arm"
        tolerance = f" (tolerance {self.tolerance:g})" if self.tolerance else ""
        bits = "every bit-width" if not self.bits else ", ".join(map(str, self.bits)) + " bits"
        text = CHECKS[self.check].format(against=against, measure=MEASURE_WORDS[self.measure], bits=bits)
        return f"{headline} {text}{tolerance}"
