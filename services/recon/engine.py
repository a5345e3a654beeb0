"""One entry point to the reconstruction core: options in, slices and volumes out.

The CLI, the Ray workers and the benchmarks all call :class:`ReconEngine`, so a slice is
reconstructed the same way wherever it runs. Models are loaded once, lazily, on first use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from services.recon import baselines, physics
from services.recon.coils import espirit_maps
from services.recon.errors import InputError
from services.recon.io import ImageVolume, KspaceVolume
from services.recon.masks import MASK_KINDS, make_mask
from services.recon.sampler import (
    CONSISTENCY_MODES,
    DEFAULT_COARSE_STEPS,
    DEFAULT_REFINE_STEPS,
    VARIANCE_SMOOTHING_PX,
)

if TYPE_CHECKING:
    from services.recon.anomaly import AnomalyDetector, AnomalyResult

RESEARCH_USE_ONLY = "research use only, not for diagnosis"
METHODS = ("diffusion", "zero-filled", "cs-l1", "cs-tv")
WARM_START_SOURCES = ("zero-filled", "cs-l1", "cs-tv")
ANOMALY_METHODS = ("guided", "unguided", "zscore")
"""Same names as :data:`services.recon.anomaly.METHODS` (kept here so importing is cheap)."""


@dataclass(frozen=True)
class ReconOptions:
    """How to reconstruct; every random choice is driven by ``seed``.

    ``warm_start`` (a diffusion step) starts the sampler from a classical estimate noised to that
    step (Chung et al., CVPR 2022) made by ``warm_start_from``; ``lam`` is the lambda of a CS
    method, or of a CS warm start. ``noise_std`` is the diffusion sampler's measurement noise
    (see :class:`~services.recon.sampler.SamplerConfig`: 0 exact data consistency, None
    estimated from k-space for noise-aware data consistency).
    """

    method: str = "diffusion"
    samples: int = 8
    steps: int = DEFAULT_COARSE_STEPS
    refine_steps: int = DEFAULT_REFINE_STEPS
    eta: float = 1.0
    seed: int = 0
    warm_start: int | None = None
    warm_start_from: str = "zero-filled"
    full_schedule: bool = False
    start_step: int | None = None
    noise_std: float | None = 0.0
    variance_smoothing_px: float = VARIANCE_SMOOTHING_PX
    consistency: str = "noised"
    lam: float | None = None
    cs_iterations: int = 100
    anomaly: bool = False
    anomaly_method: str = "guided"

    def validated(self) -> ReconOptions:
        """Return self, or raise :class:`InputError` naming the first bad option."""
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.samples < 1:
            raise InputError(f"samples must be at least 1, got {self.samples}")
        if self.steps < 1 or self.refine_steps < 0:
            raise InputError("steps must be >= 1 and refine_steps >= 0")
        if not 0.0 <= self.eta <= 1.0:
            raise InputError(f"eta must be in [0, 1], got {self.eta}")
        if self.warm_start_from not in WARM_START_SOURCES:
            raise InputError(
                f"unknown warm start source {self.warm_start_from!r}; "
                f"choose one of {', '.join(WARM_START_SOURCES)}"
            )
        if self.lam is not None and not self.lam > 0:
            raise InputError(f"lam must be positive, got {self.lam}")
        if self.consistency not in CONSISTENCY_MODES:
            raise InputError(
                f"unknown consistency {self.consistency!r}; "
                f"choose one of {', '.join(CONSISTENCY_MODES)}"
            )
        if self.anomaly_method not in ANOMALY_METHODS:
            raise InputError(
                f"unknown anomaly method {self.anomaly_method!r}; "
                f"choose one of {', '.join(ANOMALY_METHODS)}"
            )
        return self


@dataclass(frozen=True)
class RetrospectiveOptions:
    """Retrospective undersampling of images (simulated k-space) or fully sampled k-space."""

    mask: str = "random1d"
    accel: float = 4.0
    center_fraction: float = 0.08
    seed: int = 0
    snr: float = 40.0

    def validated(self) -> RetrospectiveOptions:
        if self.mask not in MASK_KINDS:
            raise InputError(f"unknown mask {self.mask!r}; choose one of {', '.join(MASK_KINDS)}")
        if not self.accel >= 1:
            raise InputError(f"acceleration must be >= 1, got {self.accel}")
        if not 0 < self.center_fraction < 1:
            raise InputError(f"center fraction must be in (0, 1), got {self.center_fraction}")
        if not self.snr > 0:
            raise InputError(f"snr must be positive, got {self.snr}")
        return self


class SliceResult(NamedTuple):
    """One reconstructed slice, in the units of the zero-filled inverse FFT of the input."""

    reconstruction: np.ndarray
    variance: np.ndarray | None
    dc_residual: float
    seconds: float
    warnings: tuple[str, ...]


class VolumeResult(NamedTuple):
    """A reconstructed volume and the attributes design.md asks the output file to carry."""

    reconstruction: np.ndarray
    variance: np.ndarray | None
    mask: np.ndarray
    attrs: dict[str, Any]


class AnomalyVolume(NamedTuple):
    """Anomaly maps of a volume: ``anomaly_map``/``healthy``/``anomaly_mask`` (S, H, W), attrs."""

    datasets: dict[str, np.ndarray]
    attrs: dict[str, Any]


class ReconEngine:
    """Holds the models and reconstructs slices; safe to build once per worker process.

    Also makes anomaly maps (Wolleb et al. 2022, :mod:`services.recon.anomaly`) of magnitude
    slices with the same prior plus the noise-aware classifier: :meth:`anomaly_slice` (one
    slice, what the Ray workers call) and :meth:`anomaly_volume`.
    """

    def __init__(
        self,
        prior_path: str | Path | None = None,
        device: str | None = None,
        threads: int | None = None,
        classifier_path: str | Path | None = None,
    ) -> None:
        self._prior_path = prior_path
        self._device = device
        self._threads = threads
        self._prior: Any = None
        self._classifier_path = classifier_path
        self._classifier: Any = None
        self._detectors: dict[str, AnomalyDetector] = {}
        if threads:
            import torch

            torch.set_num_threads(threads)

    @classmethod
    def from_prior(cls, prior: Any) -> ReconEngine:
        """An engine around an already loaded :class:`~services.recon.prior.LoadedPrior`."""
        engine = cls(prior_path=prior.path)
        engine._prior = prior
        return engine

    @property
    def prior(self) -> Any:
        """The diffusion prior, loaded on first use."""
        if self._prior is None:
            from services.recon.prior import load_prior

            self._prior = load_prior(self._prior_path, device=self._device)
        return self._prior

    @property
    def classifier(self) -> Any:
        """The anomaly maps' noise-aware classifier, loaded on first use."""
        if self._classifier is None:
            from services.recon.classifier import load_classifier

            self._classifier = load_classifier(self._classifier_path, device=self._device)
        return self._classifier

    def model_versions(self) -> dict[str, str]:
        """Name -> sha256 of every model this engine has loaded or would load."""
        versions = {self.prior.name: self.prior.sha256}
        if self._classifier is not None:
            versions[self._classifier.name] = self._classifier.sha256
        return versions

    def anomaly_detector(self, method: str = "guided", seed: int = 0) -> AnomalyDetector:
        """A detector for ``method`` with the knobs chosen on validation (built once per method).

        The maps are deterministic (DDIM, eta = 0); ``seed`` is only recorded.
        """
        from dataclasses import replace as replace_config

        from services.recon.anomaly import AnomalyDetector, default_config

        detector = self._detectors.get(method)
        if detector is None:
            config = default_config(method)
            prior = self.prior if method != "zscore" else None
            classifier = self.classifier if method == "guided" else None
            detector = AnomalyDetector(prior, classifier, config)
            self._detectors[method] = detector
        if detector.config.seed != seed:
            detector = AnomalyDetector(
                detector.prior, detector.classifier, replace_config(detector.config, seed=seed)
            )
        return detector

    def anomaly_slice(
        self, image: np.ndarray, options: ReconOptions | None = None
    ) -> AnomalyResult:
        """Anomaly map of one magnitude slice ``(H, W)`` (e.g. a reconstruction).

        ``options`` supplies ``anomaly_method`` and ``seed``; returns an
        :class:`~services.recon.anomaly.AnomalyResult` (``anomaly_map``, ``healthy``,
        ``anomaly_mask``, ``seconds``) in the input's shape and units.
        """
        options = (options or ReconOptions()).validated()
        detector = self.anomaly_detector(options.anomaly_method, options.seed)
        return detector.detect(np.abs(np.asarray(image)))

    def anomaly_volume(
        self,
        images: np.ndarray,
        options: ReconOptions | None = None,
        batch: int = 4,
        on_slice: Callable[[int, int], None] | None = None,
    ) -> AnomalyVolume:
        """Anomaly maps of magnitude slices ``(S, H, W)`` in batches, with output attributes."""
        from services.recon.anomaly import stack_results

        options = (options or ReconOptions()).validated()
        detector = self.anomaly_detector(options.anomaly_method, options.seed)
        magnitudes = np.abs(np.asarray(images))
        if magnitudes.ndim != 3:
            raise InputError(f"anomaly maps take (slices, H, W) images, got {magnitudes.shape}")
        started = time.perf_counter()
        results: list[AnomalyResult] = []
        total = magnitudes.shape[0]
        for start in range(0, total, max(1, batch)):
            results.extend(detector.detect_batch(magnitudes[start : start + max(1, batch)]))
            if on_slice is not None:
                on_slice(len(results), total)
        attrs: dict[str, Any] = {
            **detector.attributes(),
            "anomaly_seconds": time.perf_counter() - started,
        }
        return AnomalyVolume(stack_results(results), attrs)

    def reconstruct_slice(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        multicoil: bool,
        options: ReconOptions,
        initial: np.ndarray | None = None,
        pixel_size_mm: tuple[float, float] | None = None,
    ) -> SliceResult:
        """Reconstruct one slice of measured k-space ``(C, H, W)`` sampled where ``mask`` is set."""
        options = options.validated()
        started = time.perf_counter()
        kspace = np.asarray(kspace)
        validate_slice(kspace, mask)
        sampled = kspace * mask
        maps = espirit_maps(sampled) if multicoil else None
        single = sampled[0] if not multicoil else sampled
        variance: np.ndarray | None = None
        warnings: tuple[str, ...] = ()
        if options.method == "diffusion":
            image, variance, warnings = self._diffusion(
                single, mask, maps, options, initial, pixel_size_mm
            )
        else:
            image = baselines.run_baseline(
                options.method,
                single,
                mask,
                maps=maps,
                lam=options.lam,
                max_iter=options.cs_iterations,
            )
        residual = physics.data_consistency_residual(image, single, mask, maps=maps)
        return SliceResult(
            reconstruction=np.abs(image).astype(np.float32),
            variance=None if variance is None else variance.astype(np.float32),
            dc_residual=float(residual),
            seconds=time.perf_counter() - started,
            warnings=warnings,
        )

    def _diffusion(
        self,
        kspace: np.ndarray,
        mask: np.ndarray,
        maps: np.ndarray | None,
        options: ReconOptions,
        initial: np.ndarray | None,
        pixel_size_mm: tuple[float, float] | None,
    ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
        from services.recon.sampler import SamplerConfig, reconstruct

        config = SamplerConfig(
            samples=options.samples,
            steps=options.steps,
            refine_steps=options.refine_steps,
            eta=options.eta,
            warm_start=options.warm_start,
            full_schedule=options.full_schedule,
            start_step=options.start_step,
            noise_std=options.noise_std,
            variance_smoothing_px=options.variance_smoothing_px,
            consistency=options.consistency,
        )
        if options.warm_start is not None and initial is None:
            initial = baselines.run_baseline(
                options.warm_start_from,
                kspace,
                mask,
                maps=maps,
                lam=options.lam,
                max_iter=options.cs_iterations,
            )
        result = reconstruct(
            self.prior,
            kspace,
            mask,
            maps=maps,
            config=config,
            seed=options.seed,
            initial=initial,
            pixel_size_mm=pixel_size_mm,
        )
        return result.image, result.variance, tuple(result.warnings)

    def reconstruct_volume(
        self,
        volume: KspaceVolume,
        options: ReconOptions,
        on_slice: Callable[[int, int], None] | None = None,
    ) -> VolumeResult:
        """Reconstruct every slice of ``volume``; ``on_slice(done, total)`` reports progress."""
        options = options.validated()
        started = time.perf_counter()
        results = []
        total = volume.kspace.shape[0]
        for index in range(total):
            slice_options = replace(options, seed=options.seed + index)
            results.append(
                self.reconstruct_slice(
                    volume.kspace[index],
                    volume.mask[index],
                    volume.multicoil,
                    slice_options,
                    pixel_size_mm=volume.pixel_spacing_mm,
                )
            )
            if on_slice is not None:
                on_slice(index + 1, total)
        return assemble_volume(self, volume, options, results, time.perf_counter() - started)


def assemble_volume(
    engine: ReconEngine | None,
    volume: KspaceVolume,
    options: ReconOptions,
    results: list[SliceResult],
    seconds: float,
) -> VolumeResult:
    """Stack slice results and build the output attributes of design.md."""
    reconstruction = np.stack([r.reconstruction for r in results])
    variances = [r.variance for r in results]
    variance = None if any(v is None for v in variances) else np.stack(variances)  # type: ignore[arg-type]
    warnings = sorted({w for r in results for w in r.warnings})
    attrs: dict[str, Any] = {
        "method": options.method,
        "seed": options.seed,
        "seconds": float(seconds),
        "simulated_kspace": bool(volume.simulated),
        "dc_residual": np.array([r.dc_residual for r in results], dtype=np.float64),
        "research_use_only": RESEARCH_USE_ONLY,
        "source": volume.source,
        "warnings": "; ".join(warnings),
        "options": str(asdict(options)),
    }
    if options.method == "diffusion":
        prior = engine.prior if engine is not None else None
        attrs.update(
            model=getattr(prior, "name", ""),
            model_sha256=getattr(prior, "sha256", ""),
            samples=options.samples,
            steps=options.steps,
            refine_steps=options.refine_steps,
            eta=options.eta,
            variance_smoothing_px=options.variance_smoothing_px,
        )
        if options.warm_start is not None:
            attrs["warm_start"] = options.warm_start
            attrs["warm_start_from"] = options.warm_start_from
    elif options.method != "zero-filled":
        attrs["lam"] = (
            options.lam if options.lam is not None else baselines.DEFAULT_LAMBDA[options.method]
        )
        attrs["cs_iterations"] = options.cs_iterations
    return VolumeResult(reconstruction, variance, volume.mask, attrs)


def validate_slice(kspace: np.ndarray, mask: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``kspace`` is finite complex (C, H, W) fitting ``mask``."""
    if kspace.ndim != 3:
        raise InputError(f"k-space slice must be (coils, H, W), got shape {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise InputError("k-space must be complex-valued, got real values")
    if mask.shape != kspace.shape[-2:]:
        raise InputError(f"mask shape {mask.shape} does not fit k-space {kspace.shape[-2:]}")
    if not np.isfinite(kspace).all():
        raise InputError("k-space contains NaN or infinite values")
    if not mask.any():
        raise InputError("mask samples no k-space location")


def retrospective_kspace(
    images: ImageVolume, retro: RetrospectiveOptions, n_coils: int | None = None
) -> KspaceVolume:
    """Simulate measured k-space from magnitude images, then undersample it (clearly simulated).

    Each slice gets a smooth random phase and noise at ``retro.snr`` (design.md: never the
    real-valued inverse crime); one mask, a function of (shape, seed), serves the whole volume.
    """
    retro = retro.validated()
    slices, height, width = images.images.shape
    mask = make_mask(retro.mask, (height, width), retro.accel, retro.center_fraction, retro.seed)
    kspace = np.stack(
        [
            physics.simulate_kspace(images.images[i], snr=retro.snr, seed=retro.seed + i)
            for i in range(slices)
        ]
    )[:, None]
    return KspaceVolume(
        kspace=(kspace * mask).astype(np.complex64),
        multicoil=False,
        mask=np.broadcast_to(mask, (slices, height, width)).copy(),
        attrs={
            "simulated_from": "magnitude images",
            "snr": retro.snr,
            "mask_kind": retro.mask,
            "acceleration": retro.accel,
            "center_fraction": retro.center_fraction,
            "mask_seed": retro.seed,
        },
        simulated=True,
        pixel_spacing_mm=images.pixel_spacing_mm,
        source=images.source,
    )


def undersample(volume: KspaceVolume, retro: RetrospectiveOptions) -> KspaceVolume:
    """Apply a retrospective mask to already measured k-space (on top of its own mask)."""
    retro = retro.validated()
    height, width = volume.kspace.shape[-2:]
    extra = make_mask(retro.mask, (height, width), retro.accel, retro.center_fraction, retro.seed)
    mask = volume.mask & extra
    return replace(
        volume,
        kspace=(volume.kspace * mask[:, None]).astype(np.complex64),
        mask=mask,
        attrs={
            **volume.attrs,
            "mask_kind": retro.mask,
            "acceleration": retro.accel,
            "center_fraction": retro.center_fraction,
            "mask_seed": retro.seed,
        },
    )
