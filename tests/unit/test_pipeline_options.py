"""JobOptions: the options shared by the API, job.json files and the flows."""

from __future__ import annotations

import json
import typing

import pytest

from pipelines.config import PipelineConfig
from pipelines.options import JobOptions, MaskKind, Method, default_job_options
from services.recon.errors import InputError
from services.settings import load_settings


def test_spellings_match_the_reconstruction_core() -> None:
    from services.recon.engine import METHODS
    from services.recon.masks import MASK_KINDS

    assert set(typing.get_args(Method)) == set(METHODS)
    assert set(typing.get_args(MaskKind)) == set(MASK_KINDS)


def test_defaults_match_the_engine_defaults() -> None:
    from services.recon.engine import ReconOptions, RetrospectiveOptions

    options = JobOptions()
    engine, retro = ReconOptions(), RetrospectiveOptions()
    assert (
        options.samples,
        options.steps,
        options.refine_steps,
        options.seed,
        options.noise_std,
        options.variance_smoothing_px,
    ) == (
        engine.samples,
        engine.steps,
        engine.refine_steps,
        engine.seed,
        engine.noise_std,
        engine.variance_smoothing_px,
    )
    assert (options.accel, options.center_fraction, options.snr) == (
        retro.accel,
        retro.center_fraction,
        retro.snr,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "magic"}, "method"),
        ({"samples": 0}, "samples"),
        ({"reconstruct": False, "anomaly": False}, "reconstruct, compute an anomaly map"),
        ({"colour": "red"}, "colour"),
        ({"accel": 0.5}, "accel"),
        ({"mask": "spiral"}, "mask"),
        ({"noise_std": -1}, "noise_std"),
        ({"noise_std": "loud"}, "noise_std"),
        ({"variance_smoothing_px": 100}, "variance_smoothing_px"),
        ([1, 2], "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_options_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        JobOptions.parse(data, "job.json")
    assert str(caught.value).startswith("job.json")
    assert "\n" not in str(caught.value)


def test_json_text_and_merging() -> None:
    options = JobOptions.parse(b'{"method": "cs-tv", "seed": 7}')
    assert (options.method, options.seed) == ("cs-tv", 7)
    merged = options.merged({"samples": 4})
    assert (merged.method, merged.samples, merged.seed) == ("cs-tv", 4, 7)
    with pytest.raises(InputError, match="samples"):
        options.merged({"samples": -1})


def test_core_option_types() -> None:
    options = JobOptions(method="zero-filled", seed=3, mask="poisson2d", accel=8.0, snr=30.0)
    recon = options.recon_options()
    retro = options.retrospective_options()
    assert (recon.method, recon.seed) == ("zero-filled", 3)
    assert (retro.mask, retro.accel, retro.seed, retro.snr) == ("poisson2d", 8.0, 3, 30.0)
    assert JobOptions().retrospective_options().mask == "random1d"
    aware = JobOptions(noise_std="auto", variance_smoothing_px=0).recon_options()
    assert (aware.noise_std, aware.variance_smoothing_px) == (None, 0.0)
    assert JobOptions(noise_std=0.5).recon_options().noise_std == 0.5


def test_record_form_round_trips() -> None:
    options = JobOptions(method="cs-l1", anomaly=True, mask="equispaced1d")
    assert JobOptions.parse(options.as_record()) == options
    aware = JobOptions(noise_std="auto")
    assert JobOptions.parse(json.dumps(aware.as_record())) == aware


def test_default_options_from_settings() -> None:
    assert default_job_options({"method": "zero-filled"}).method == "zero-filled"
    config = PipelineConfig.from_settings(load_settings())
    assert config.ingest_quiet_seconds > 0 and config.ingest_interval_seconds > 0
    assert isinstance(config.default_options, JobOptions)


def test_pipeline_knobs_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRDIFF_INGEST_INTERVAL_SECONDS", "3600")
    monkeypatch.setenv("MRDIFF_INGEST_QUIET_SECONDS", "2.5")
    monkeypatch.setenv("MRDIFF_DEFAULT_JOB_OPTIONS", '{"method": "cs-l1", "seed": 7}')
    config = PipelineConfig.from_settings(load_settings())
    assert (config.ingest_interval_seconds, config.ingest_quiet_seconds) == (3600.0, 2.5)
    assert (config.default_options.method, config.default_options.seed) == ("cs-l1", 7)
    monkeypatch.setenv("MRDIFF_DEFAULT_JOB_OPTIONS", '{"method": "magic"}')
    with pytest.raises(InputError):
        PipelineConfig.from_settings(load_settings())
