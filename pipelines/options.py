"""What a job asks for: :class:`JobOptions`, shared by the API, ``job.json`` files and the flows.

Kept free of torch and of the reconstruction core so the API process can validate requests
cheaply; :meth:`JobOptions.recon_options` and :meth:`JobOptions.retrospective_options` turn
them into the core's own option types inside the flow.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.recon.errors import InputError

if TYPE_CHECKING:
    from services.recon.engine import ReconOptions, RetrospectiveOptions

# Same spellings as services.recon.engine.METHODS and services.recon.masks.MASK_KINDS, and the
# same sampler defaults as services.recon.engine.ReconOptions (a unit test keeps them in step
# without importing torch here).
Method = Literal["diffusion", "zero-filled", "cs-l1", "cs-tv"]
MaskKind = Literal["random1d", "equispaced1d", "poisson2d"]
DEFAULT_RETROSPECTIVE_MASK: MaskKind = "random1d"


class JobOptions(BaseModel):
    """Options of one job: reconstruct k-space, compute an anomaly map, or both.

    ``mask``/``accel``/``center_fraction``/``snr`` describe retrospective undersampling: image
    inputs (DICOM, NIfTI) are turned into simulated k-space with that mask (labelled
    ``simulated_kspace``), and k-space inputs get the mask on top of their own when ``mask`` is
    given. Every random choice derives from ``seed``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reconstruct: bool = True
    anomaly: bool = False
    method: Method = "diffusion"
    samples: int = Field(default=8, ge=1, le=64, description="diffusion samples N")
    steps: int = Field(default=45, ge=1, le=1000, description="coarse respaced steps")
    refine_steps: int = Field(default=20, ge=0, le=1000, description="refinement steps")
    noise_std: float | Literal["auto"] = Field(
        default=0.0,
        description="measurement noise std for diffusion data consistency (input units): "
        "0 exact replacement, 'auto' estimated from the k-space corners (noise-aware, DDNM+)",
    )
    variance_smoothing_px: float = Field(
        default=2.0, ge=0.0, le=16.0, description="Gaussian sigma pooling the sample variance"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    mask: MaskKind | None = Field(default=None, description="retrospective mask kind")
    accel: float = Field(default=4.0, ge=1.0, le=64.0, description="retrospective acceleration")
    center_fraction: float = Field(default=0.08, gt=0.0, lt=1.0)
    snr: float = Field(default=40.0, gt=0.0, le=1e6, description="SNR of simulated k-space")

    @model_validator(mode="after")
    def _asks_for_something(self) -> JobOptions:
        if not (self.reconstruct or self.anomaly):
            raise ValueError("a job must reconstruct, compute an anomaly map, or both")
        if self.noise_std != "auto" and not 0.0 <= self.noise_std < float("inf"):
            raise ValueError("noise_std must be 'auto' or a finite number >= 0")
        return self

    @classmethod
    def parse(cls, data: Any, source: str = "options") -> JobOptions:
        """Validate a mapping (or JSON text/bytes); :class:`InputError` names the first problem."""
        try:
            if isinstance(data, bytes | str):
                data = json.loads(data)
            if not isinstance(data, dict):
                raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
            return cls.model_validate(data)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{source}: not valid JSON ({error.msg} at line {error.lineno})"
            ) from None
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "options"
            message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise InputError(f"{source}: {where}: {message}") from None

    def merged(self, overrides: dict[str, Any], source: str = "options") -> JobOptions:
        """These options with ``overrides`` applied (validated as a whole)."""
        return JobOptions.parse({**self.model_dump(), **overrides}, source)

    def as_record(self) -> dict[str, Any]:
        """The JSON form stored in a job record and hashed into its processing key."""
        return self.model_dump(mode="json")

    def recon_options(self) -> ReconOptions:
        """The reconstruction core's options for these job options."""
        from services.recon.engine import ReconOptions

        return ReconOptions(
            method=self.method,
            samples=self.samples,
            steps=self.steps,
            refine_steps=self.refine_steps,
            seed=self.seed,
            noise_std=None if self.noise_std == "auto" else self.noise_std,
            variance_smoothing_px=self.variance_smoothing_px,
            anomaly=self.anomaly,
        ).validated()

    def retrospective_options(self) -> RetrospectiveOptions:
        """Retrospective undersampling (the mask defaults to random 1-D for image inputs)."""
        from services.recon.engine import RetrospectiveOptions

        return RetrospectiveOptions(
            mask=self.mask or DEFAULT_RETROSPECTIVE_MASK,
            accel=self.accel,
            center_fraction=self.center_fraction,
            seed=self.seed,
            snr=self.snr,
        ).validated()


def default_job_options(overrides: dict[str, Any] | None = None) -> JobOptions:
    """Options for inputs that arrive without a ``job.json``: the defaults plus ``overrides``
    (from settings), validated."""
    return JobOptions.parse(dict(overrides or {}), "default job options")
